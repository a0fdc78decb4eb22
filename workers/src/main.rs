use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = workers::Config::parse();
    loyalty::telemetry::init("info,workers=info,loyalty=info");
    workers::run(config).await
}
