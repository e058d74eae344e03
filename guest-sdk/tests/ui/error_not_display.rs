struct Oops;

#[escrow_guest::plugin]
fn run(input: u32) -> Result<u32, Oops> {
    Ok(input)
}

fn main() {}
