use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ingest::Config::parse();
    loyalty::telemetry::init("info,ingest=info,loyalty=info,tower_http=info");
    ingest::run(config).await
}
