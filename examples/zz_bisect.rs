use wengert::*;
fn main() {
    let g = models::char_rnn(1, 2, 5, 3).unwrap();
    print!("{g}");
}
