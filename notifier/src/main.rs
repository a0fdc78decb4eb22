use clap::Parser;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    loyalty_service::runtime::run(async {
        let config = notifier::Config::parse();
        loyalty_service::telemetry::init("info,notifier=info,loyalty=info");
        notifier::run(config).await
    })
}
