use clap::Parser;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = notifier::Config::parse();
    loyalty_service::telemetry::init("info,notifier=info,loyalty=info");
    notifier::run(config).await
}
