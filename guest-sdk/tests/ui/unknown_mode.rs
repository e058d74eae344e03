#[escrow_guest::plugin(json)]
fn run(input: u32) -> Result<u32, String> {
    Ok(input)
}

fn main() {}
