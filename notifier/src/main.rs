use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = notifier::Config::parse();
    loyalty::telemetry::init("info,notifier=info,loyalty=info");
    notifier::run(config).await
}
