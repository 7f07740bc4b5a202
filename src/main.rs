fn main() {
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`mezo encode --json | head`) instead of panicking on the broken pipe.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(mezo::cli::main());
}
