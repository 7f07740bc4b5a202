fn main() {
    std::process::exit(mezo::cli::main());
}
