#[escrow_guest::plugin]
async fn run(input: u32) -> Result<u32, String> {
    Ok(input)
}

fn main() {}
