//! `sqlx::migrate!` embeds `../migrations` when `loyalty` compiles; without this line a migration
//! added later is not seen until something else in the crate changes.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
