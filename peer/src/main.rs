//! `peer`: see the library's documentation.

fn main() {
    peer::main();
}
