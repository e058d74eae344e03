struct NotDisplay;

type Result<T> = std::result::Result<T, NotDisplay>;

#[escrow_guest::plugin]
fn run(input: u32) -> Result<u32> {
    Ok(input)
}

fn main() {}
