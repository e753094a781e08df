//! The `redirect-cni` executable: a chained CNI plugin that enrolls each new pod with the
//! marrow node proxy. It reads the CNI environment and stdin, runs [`redirect_cni::cni`], prints
//! the result (or the CNI error JSON) on stdout and logs to stderr.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use redirect_cni::cni::{NetnsId, Plugin, ProcessEnv};

fn main() -> ExitCode {
    let mut stderr = io::stderr().lock();
    let mut plugin = Plugin::new(&ProcessEnv);
    match NetnsId::of_path(Path::new("/proc/self/ns/net")) {
        Ok(host) => plugin = plugin.refusing_netns(host),
        // Only a safety net: the node proxy also knows which namespace is its own.
        Err(err) => {
            let _ = writeln!(
                stderr,
                "redirect-cni: level=warn msg=\"cannot identify the host network namespace\" \
                 error={:?}",
                err.to_string()
            );
        }
    }
    // Run by hand from a terminal (VERSION, say), there is no configuration to wait for.
    let outcome = if io::stdin().is_terminal() {
        plugin.run(&mut io::empty(), &mut stderr)
    } else {
        plugin.run(&mut io::stdin().lock(), &mut stderr)
    };
    if let Some(json) = &outcome.stdout {
        let mut stdout = io::stdout().lock();
        if let Err(err) = writeln!(stdout, "{json}").and_then(|()| stdout.flush()) {
            let _ = writeln!(
                stderr,
                "redirect-cni: level=error msg=\"writing the result failed\" error={:?}",
                err.to_string()
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::from(outcome.exit_code)
}
