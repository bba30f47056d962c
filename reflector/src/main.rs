//! `callwatch-reflector`: the UDP reflector on its own (no ingest, no store, no HTTP API).

use callwatch_reflector::standalone::{run, ReflectArgs};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "callwatch-reflector",
    version,
    about = "The UDP reflector callwatch agents run their call tests against, on its own.",
    long_about = "The UDP reflector callwatch agents run their call tests against, on its own: \
no ingest, no store, no HTTP API.

For a reflector in another place than the collector (`callwatch-collector serve` runs the same \
reflector itself). Its key is made in DIR on first start (DIR/reflector.key, owner-only); the \
public halves are printed and written to DIR/reflector.pub (the sealing key agents need, their \
reflector_key) and DIR/reflector-attest.pub (the attestation key the collector needs). Register \
it on the collector with `callwatch-collector reflector add`. It signs the region (country, ASN) \
its probes come from, looked up in the --geo sources; without any it attests ZZ/AS0. Stops on \
SIGTERM or Ctrl-C (exit 0).

`callwatch-collector reflect` takes the same options and runs the same code.",
    after_long_help = "Examples:
  A reflector on the usual port, attesting regions, sealing path tokens to its collector:
    callwatch-reflector --data /var/lib/callwatch-reflector --reflector 0.0.0.0:3479 \\
        --geo GeoLite2-Country.mmdb --geo GeoLite2-ASN.mmdb \\
        --collector-key \"$(cat collector.seal.pub)\"

  Several ports (one socket each), IPv4 and IPv6:
    callwatch-reflector --data /var/lib/callwatch-reflector \\
        --reflector 0.0.0.0:3479 --reflector [::]:3479 --reflector 0.0.0.0:40401

  Then, on the collector, register it with the keys it printed:
    callwatch-collector reflector add --data /var/lib/callwatch tallinn-1 \\
        \"$(cat reflector-attest.pub)\" --address reflector.example.org:3479 \\
        --seal-key \"$(cat reflector.pub)\"

  Try it on loopback with a 5-second agent test:
    callwatch-reflector --data /tmp/reflector --reflector 127.0.0.1:3479 &
    callwatch-agent test --reflector 127.0.0.1:3479 --duration 5"
)]
struct Cli {
    #[command(flatten)]
    args: ReflectArgs,
}

#[tokio::main]
async fn main() {
    // Its key file and the public halves are for its owner only.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    callwatch_reflector::term::init_logging();
    let cli: Cli = callwatch_reflector::term::parse_or_exit();
    if let Err(e) = run(cli.args).await {
        eprintln!("callwatch-reflector: {e:#}");
        std::process::exit(1);
    }
}
