fn main() {
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`mezo encode --json | head`) instead of panicking on the broken pipe.
    // SAFETY: called before any other thread exists; SIG_DFL and SIG_IGN are valid dispositions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // A write past a file-size limit (`ulimit -f` on a cluster) fails with EFBIG and a message
        // naming the file, as a full disk does, instead of killing the process without one.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    std::process::exit(mezo::cli::main());
}
