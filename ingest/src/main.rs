use clap::Parser;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ingest::Config::parse();
    loyalty_service::telemetry::init("info,ingest=info,loyalty=info,tower_http=info");
    ingest::run(config).await
}
