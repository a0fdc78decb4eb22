use clap::Parser;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    loyalty_service::runtime::run(async {
        let config = workers::Config::parse();
        loyalty_service::telemetry::init("info,workers=info,loyalty=info");
        workers::run(config).await
    })
}
