struct Order;

#[escrow_guest::plugin]
fn run(input: Order) -> Result<u32, String> {
    let _ = input;
    Ok(1)
}

fn main() {}
