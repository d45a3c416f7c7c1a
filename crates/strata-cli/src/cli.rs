//! Command-line syntax: the clap structures for the global options and every
//! verb. Parsing only; the work happens in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Strata: an encrypted virtual drive over cloud storage";

const LONG_ABOUT: &str = "\
Strata: an encrypted virtual drive over cloud storage.

Everything stored (file contents, names, sizes, the directory tree) is encrypted
on this machine; the store only ever sees opaque objects.

The store is given with --store (or STRATA_STORE) as a URL (file:///abs/path,
memory://name), a filesystem path (/abs/path, ./rel/path), or the name of a
store saved in the config file ($STRATA_CONFIG, else ~/.config/strata/config.toml):

    [stores]
    photos = \"file:///mnt/backup/photos\"

The password is read from --password-file (its first line), else from the
STRATA_PASSWORD environment variable, else asked on the terminal.";

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every verb accepts.
#[derive(Debug, Args)]
pub struct Global {
    /// Store URL, path or saved store name
    #[arg(
        long,
        global = true,
        env = "STRATA_STORE",
        hide_env_values = true,
        value_name = "URL|NAME"
    )]
    pub store: Option<String>,

    /// Read the vault password from the first line of this file
    #[arg(long, global = true, value_name = "PATH")]
    pub password_file: Option<PathBuf>,

    /// Directory holding this machine's rollback-detection state
    /// [default: $XDG_STATE_HOME/strata]
    #[arg(long, global = true, env = "STRATA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Open the vault even if the store holds an older version than this
    /// machine has seen (e.g. after deliberately restoring a backup)
    #[arg(long, global = true)]
    pub accept_rollback: bool,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress bars or summaries
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The writer lease: one writer per vault at a time.
#[derive(Debug, Args, Clone, Default)]
pub struct LeaseArgs {
    /// Take the vault's writer lease even if another writer holds it.
    /// Only when that writer is gone for sure (crashed on another machine):
    /// a writer that is still running stops committing, and what it has not
    /// committed yet is not saved to the vault
    #[arg(long)]
    pub break_lease: bool,
    /// If another writer holds the vault (a mount on another device), ask
    /// it to hand over and wait: it finishes what it accepted, commits,
    /// and becomes read-only. A mount always asks
    #[arg(long, conflicts_with = "break_lease")]
    pub take_over: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Init(InitArgs),
    Put(PutArgs),
    Get(GetArgs),
    Ls(LsArgs),
    Cat(CatArgs),
    Mkdir(MkdirArgs),
    Rm(RmArgs),
    Mv(MvArgs),
    Info(InfoArgs),
    Passwd(PasswdArgs),
    Gc(GcArgs),
    Check(CheckArgs),
    Mount(MountArgs),
    Unmount(UnmountArgs),
    Status(StatusArgs),
    #[command(subcommand)]
    Serve(ServeCommand),
    Demo(DemoArgs),
    CloudServer(CloudServerArgs),
}

/// Serve a folder through a primitive cloud API (upload_file /
/// download_file / list_files / delete_file), like the cheapest clouds offer.
///
/// Every request needs `Authorization: Bearer TOKEN`. Point Strata at it with
/// `basic+http://HOST:PORT/?token-file=PATH` (the store URL it prints works
/// as is; with --tls-cert/--tls-key it serves https, and clients of a private
/// CA add `&ca-file=CA.pem`). The folder holds the objects as
/// plain files, so it is also a `file://` store of the same vault. The knobs
/// --bandwidth/--latency/--fail-rate emulate a slow or flaky link for tests
/// and benchmarks.
#[derive(Debug, Args)]
pub struct CloudServerArgs {
    /// Folder holding the objects
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8921", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,

    /// File with the bearer token (created with a random token if missing)
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,

    /// Refuse objects above this size (HTTP 413)
    #[arg(long, value_name = "SIZE")]
    pub max_object_size: Option<String>,

    /// Ignore Range headers: whole-object downloads only
    #[arg(long)]
    pub no_range: bool,

    /// Shape transfers to this rate, e.g. 20mbit
    #[arg(long, value_name = "RATE")]
    pub bandwidth: Option<String>,

    /// Delay every request by this many milliseconds
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,

    /// Fail this share of requests (500s, dropped connections, truncated bodies)
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub fail_rate: f64,

    /// Close a connection on which nothing moved for this long (a stalled
    /// upload leaves nothing behind)
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub idle_timeout_secs: u64,

    /// Serve https with this certificate chain (PEM; needs --tls-key)
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Mount the vault as a read-write folder (FUSE).
///
/// Runs in the foreground until Ctrl-C / SIGTERM / `strata unmount`, then
/// uploads what is pending (saying how much is left) and unmounts. Writes go
/// to a local write-back cache first: `close` makes data durable in the local
/// journal, `fsync` makes it durable in the store (default `--fsync cloud`).
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Empty directory to mount on
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Journal, dirty chunks and read cache [default: ~/.cache/strata/<vault id>]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Local cache budget: up to 3/4 holds not-yet-uploaded data (writers
    /// wait beyond it), 1/4 caches downloaded data (not used for a
    /// file:// store, which is read straight)
    #[arg(long, default_value = "2GiB", value_name = "SIZE")]
    pub cache_size: String,

    /// Mount read-only: takes no writer lease, so it also works while
    /// another writer holds the vault, and follows that writer's changes
    /// (see --refresh)
    #[arg(long)]
    pub read_only: bool,

    /// With --read-only, or after handing the vault over to another
    /// device: look for the writer's new changes every SECS seconds (one
    /// listing of the store when nothing changed); 0 = show the vault as
    /// of mounting
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub refresh: u64,

    /// While idle, look every SECS seconds whether another device asks for
    /// the vault (one request each time; also how soon it notices a
    /// `--break-lease`). Another device's mount waits up to this long, plus
    /// the upload of what is pending here, for the handoff
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_poll: u64,

    #[command(flatten)]
    pub lease: LeaseArgs,

    /// Let other users access the mount (non-root: needs user_allow_other
    /// in /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,

    /// When fsync returns: `cloud` = data and metadata are in the store,
    /// `local` = in the local cache and journal (uploaded soon after)
    #[arg(long, value_enum, default_value = "cloud")]
    pub fsync: FsyncArg,

    /// When close returns: `durable` = the file's data and size are synced
    /// to the local disk; `buffered` = written to the local cache, synced
    /// within a second (faster for many small files; a power cut may lose
    /// the last second's closed files, a crash of strata loses nothing)
    #[arg(long, value_enum, default_value = "durable")]
    pub close: CloseArg,

    /// Run in the background; returns once the mount is ready
    #[arg(long)]
    pub daemon: bool,

    /// Set by --daemon for the background process: the password comes on stdin
    #[arg(long, hide = true)]
    pub password_stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseArg {
    Durable,
    Buffered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncArg {
    Cloud,
    Local,
}

/// Serve the vault over the network: WebDAV or plain HTTP.
///
/// For devices and systems without FUSE: a video player on a phone, the
/// Windows Explorer, the macOS Finder, rclone, davfs2. Runs in the
/// foreground until Ctrl-C / SIGTERM, then uploads what is pending.
#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// Read-write WebDAV over the same cache, journal and writer lease as a
    /// mount (--read-only: no lease, nothing written)
    Webdav(ServeArgs),
    /// Read-only HTTP: an HTML index per folder, Range requests, ETag,
    /// Last-Modified, Content-Type from the file name (for players and
    /// browsers)
    Http(ServeArgs),
}

/// Options of `strata serve webdav|http`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:8922 for webdav,
    /// 127.0.0.1:8923 for http]. Anything but a loopback address needs
    /// --htpasswd
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,

    /// Apache htpasswd file with bcrypt entries (`htpasswd -B -c FILE USER`):
    /// every request must log in as one of its users
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,

    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve read-only: takes no writer lease (always so for `serve http`),
    /// and follows the writer's changes (see --refresh)
    #[arg(long)]
    pub read_only: bool,

    /// Read-only: look for the writer's new changes every SECS seconds
    /// (one listing of the store when nothing changed); 0 = serve the
    /// vault as of the start
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub refresh: u64,

    /// While idle, look every SECS seconds whether another device asks for
    /// the vault (one request each time; also how soon it notices a
    /// `--break-lease`). Another device's mount waits up to this long, plus
    /// the upload of what is pending here, for the handoff
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_poll: u64,

    /// Journal, dirty chunks and read cache [default: ~/.cache/strata/<vault id>,
    /// or <vault id>-ro when read-only, so it runs beside a mount]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Local cache budget, as for `strata mount`
    #[arg(long, default_value = "2GiB", value_name = "SIZE")]
    pub cache_size: String,

    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Unmount a Strata mount, waiting until its pending uploads are in the store.
#[derive(Debug, Args)]
pub struct UnmountArgs {
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Give up waiting after this many seconds (pending data stays in the
    /// local cache and is uploaded at the next mount)
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Show a mount's state: pending uploads, cache use, requests and bytes moved.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Print the raw JSON status
    #[arg(long)]
    pub json: bool,
}

/// Try Strata in one command: an encrypted drive at ./StrataDrive over the
/// bundled primitive cloud server.
///
/// Starts the server on a loopback port with its data under
/// ~/.local/share/strata/demo-cloud, creates the vault there on first use
/// (password from the prompt or STRATA_PASSWORD), mounts it, and on Ctrl-C
/// uploads what is pending, unmounts and stops the server. Running it again
/// reopens the same vault.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to mount [default: ./StrataDrive]
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Create a new, empty vault on an empty store.
///
/// Asks for the password twice (or reads it from --password-file /
/// STRATA_PASSWORD). The key-derivation cost can be lowered for tests with
/// STRATA_KDF_MEMORY_KIB and STRATA_KDF_TIME; never do that for real data.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The store to create the vault on (instead of --store)
    #[arg(value_name = "STORE")]
    pub store: Option<String>,

    /// Chunk size for file contents (rounded down to a multiple of 64 KiB)
    #[arg(long, default_value = "4MiB", value_name = "SIZE")]
    pub chunk_size: String,

    /// Argon2id memory cost in KiB (for tests)
    #[arg(long, env = "STRATA_KDF_MEMORY_KIB", hide = true)]
    pub kdf_memory_kib: Option<u32>,

    /// Argon2id time cost (for tests)
    #[arg(long, env = "STRATA_KDF_TIME", hide = true)]
    pub kdf_time: Option<u32>,
}

/// Copy local files and directories into the vault (recursively, like cp -r).
///
/// If DEST is an existing vault directory, the sources are put inside it;
/// otherwise, with a single source, DEST is its new name. Permission bits and
/// times are kept; symbolic links are stored as links; other special files are
/// skipped with a warning.
///
/// Files already in the vault with the same size and modification time are
/// skipped (with --checksum: the same content), others are replaced, so
/// running the same put again after an interruption resumes it. Progress is
/// committed every few seconds.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Local files or directories to upload
    #[arg(value_name = "LOCAL", required = true)]
    pub sources: Vec<PathBuf>,

    /// Vault destination (directory or new name)
    #[arg(value_name = "DEST")]
    pub dest: String,

    /// Replace whatever exists in the vault, even files that look unchanged
    #[arg(short, long)]
    pub force: bool,

    /// Skip a file already in the vault only if its content is the same
    /// (read and hashed), not just its size and modification time
    #[arg(short = 'c', long)]
    pub checksum: bool,

    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Copy files and directories out of the vault (recursively).
///
/// If LOCAL is an existing directory, the sources are written inside it;
/// otherwise, with a single source, LOCAL is its new name. Modes and times are
/// restored. Each file is written to a temporary file first and renamed into
/// place, so an interrupted get leaves no partial file.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Vault paths to download
    #[arg(value_name = "SRC", required = true)]
    pub sources: Vec<String>,

    /// Local destination directory (or new name)
    #[arg(value_name = "LOCAL")]
    pub dest: PathBuf,

    /// Replace local files that already exist
    #[arg(short, long)]
    pub force: bool,
}

/// List a vault directory.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Long format: mode, links, size, modification time, name
    #[arg(short = 'l')]
    pub long: bool,

    /// List subdirectories recursively
    #[arg(short = 'R', long)]
    pub recursive: bool,

    /// Vault paths to list
    #[arg(value_name = "PATH", default_value = "/")]
    pub paths: Vec<String>,
}

/// Write the contents of vault files to standard output.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// Vault files
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<String>,
}

/// Create vault directories.
#[derive(Debug, Args)]
pub struct MkdirArgs {
    /// Create missing parents; an existing directory is not an error
    #[arg(short, long)]
    pub parents: bool,

    /// Permission bits of new directories, in octal
    #[arg(short, long, default_value = "755", value_name = "OCTAL")]
    pub mode: String,

    /// Directories to create
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<String>,

    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Remove files, links and directories from the vault.
///
/// Space is reclaimed at once for contents nothing else references.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove directories and their contents
    #[arg(short, long)]
    pub recursive: bool,

    /// Ignore paths that do not exist
    #[arg(short, long)]
    pub force: bool,

    /// Paths to remove
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<String>,

    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Move or rename within the vault (like mv).
///
/// If DEST is an existing directory, SRC moves into it; otherwise SRC takes
/// the name DEST (replacing a file there).
#[derive(Debug, Args)]
pub struct MvArgs {
    /// What to move
    #[arg(value_name = "SRC", required = true)]
    pub sources: Vec<String>,

    /// Target directory or new name
    #[arg(value_name = "DEST")]
    pub dest: String,

    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Show vault usage: file counts, sizes, deduplication, store objects, and
/// who holds the writer lease.
#[derive(Debug, Args)]
pub struct InfoArgs {}

/// Change the vault password.
///
/// Only the small header object is rewritten; the data stays as it is. The
/// current password comes from the usual sources (--password-file,
/// STRATA_PASSWORD, prompt), the new one from --new-password-file,
/// STRATA_NEW_PASSWORD, or a prompt (asked twice).
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Read the new password from the first line of this file
    #[arg(long, value_name = "PATH")]
    pub new_password_file: Option<PathBuf>,

    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Delete stored objects nothing references (leftovers of interrupted runs),
/// and repack packs of small files that deletions left mostly empty.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Repack a pack when its live items fill less than this percentage of
    /// it (0 = never repack)
    #[arg(long, value_name = "PERCENT", default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub repack_below: u8,
}

/// Verify the vault: every referenced blob exists with the right size.
///
/// With --read-data, every blob is also downloaded and authenticated. Exits
/// with status 1 and lists the damaged objects and affected files if there is
/// any problem.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Download and authenticate all data (slow; reads the whole vault)
    #[arg(long)]
    pub read_data: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn put_splits_sources_and_dest() {
        let c = Cli::try_parse_from(["strata", "put", "a", "b", "/d"]).unwrap();
        match c.command {
            Command::Put(p) => {
                assert_eq!(p.sources, vec![PathBuf::from("a"), PathBuf::from("b")]);
                assert_eq!(p.dest, "/d");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["strata", "put", "/d"]).is_err());
    }
}
