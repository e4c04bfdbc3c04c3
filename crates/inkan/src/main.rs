#![forbid(unsafe_code)]

use std::process::ExitCode;

/// glibc's allocator serializes on arena locks under the proxy's
/// allocate-per-request pattern; mimalloc's per-thread heaps do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    inkan::cli::main()
}
