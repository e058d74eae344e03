#[escrow_guest::plugin]
fn run(a: u32, b: u32) -> Result<u32, String> {
    Ok(a + b)
}

fn main() {}
