#[escrow_guest::plugin]
fn run(input: u32) -> u32 {
    input
}

fn main() {}
