//! The eBPF capture: loads marrow's programs, attaches them, and owns the pinned maps.
//!
//! Invariants:
//! - Maps are pinned by name under `<bpffs>/maps`, so a restarted proxy opens the same maps.
//! - The cgroup programs (connect4/6, getpeername4/6, sockops) and each pod's `sk_lookup` are
//!   attached through bpf links pinned under `<bpffs>/links`. While a pin exists the program
//!   stays attached, also when no proxy runs: enrolled pods then fail closed (outbound connects
//!   are refused at 127.0.0.1:15001, inbound hits `SK_DROP`). A restarted proxy finds the pins
//!   and does not attach twice.
//! - `cgroup/getsockopt` is attached by descriptor only (aya 0.14 cannot pin that link type):
//!   it is needed only while a proxy runs, and every running proxy attaches its own.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, CgroupSockopt, ProgramError, SkLookup, SockOps,
};
use aya::{Ebpf, EbpfError, EbpfLoader};
use marrow_common::{IpKey, maps, programs};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors while loading, attaching or updating the capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// bpffs could not be mounted or the pin directory created.
    #[error("bpffs at {path}: {source}")]
    Bpffs {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The object could not be read or the kernel refused a program or map.
    #[error("loading eBPF object {path}: {source}")]
    Load {
        /// The object file.
        path: PathBuf,
        /// Cause.
        source: Box<EbpfError>,
    },
    /// The object lacks a program this proxy needs (object and proxy versions differ).
    #[error("eBPF object has no program or map named {0}")]
    Missing(&'static str),
    /// Loading, attaching or pinning a program failed.
    #[error("{action} program {program}: {source}")]
    Program {
        /// What was being done.
        action: &'static str,
        /// Program name.
        program: &'static str,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The cgroup to attach to could not be opened.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A map update failed.
    #[error("updating map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Cause.
        source: Box<MapError>,
    },
}

/// Where the capture lives on this node.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// The compiled eBPF object.
    pub object: PathBuf,
    /// This proxy's directory on bpffs (maps and links are pinned below it).
    pub bpffs_dir: PathBuf,
    /// The cgroup2 directory the cgroup programs attach to (the cgroup2 root in production).
    pub cgroup: PathBuf,
}

/// The loaded programs and the maps the proxy updates.
pub struct Capture {
    ebpf: Ebpf,
    enrolled: HashMap<MapData, u64, u32>,
    pod_addrs: HashMap<MapData, IpKey, u32>,
    inbound_socks: SockHash<MapData, IpKey>,
    links_dir: PathBuf,
}

impl Capture {
    /// Loads the object (re-using pinned maps), attaches the cgroup programs unless their links
    /// are already pinned, and prepares `sk_lookup` for per-pod attachment.
    pub fn load(config: &CaptureConfig) -> Result<Self, CaptureError> {
        ensure_bpffs(&config.bpffs_dir)?;
        let maps_dir = config.bpffs_dir.join("maps");
        let links_dir = config.bpffs_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|source| CaptureError::Bpffs {
                path: dir.clone(),
                source,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load_file(&config.object)
            .map_err(|source| CaptureError::Load {
                path: config.object.clone(),
                source: Box::new(source),
            })?;
        let cgroup = fs::File::open(&config.cgroup).map_err(|source| CaptureError::Cgroup {
            path: config.cgroup.clone(),
            source,
        })?;

        for name in [
            programs::CONNECT4,
            programs::CONNECT6,
            programs::GETPEERNAME4,
            programs::GETPEERNAME6,
        ] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            load(prog.load(), name)?;
            attach_pinned(&links_dir, name, || {
                let id = prog
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(boxed)?;
                FdLink::try_from(prog.take_link(id).map_err(boxed)?).map_err(boxed)
            })?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, programs::SOCKOPS)?;
        load(sockops.load(), programs::SOCKOPS)?;
        attach_pinned(&links_dir, programs::SOCKOPS, || {
            let id = sockops
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(boxed)?;
            FdLink::try_from(sockops.take_link(id).map_err(boxed)?).map_err(boxed)
        })?;
        let getsockopt: &mut CgroupSockopt = program(&mut ebpf, programs::GETSOCKOPT)?;
        load(getsockopt.load(), programs::GETSOCKOPT)?;
        // Owned by the program, detached when this process exits.
        getsockopt
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| program_error("attaching", programs::GETSOCKOPT, e))?;
        let lookup: &mut SkLookup = program(&mut ebpf, programs::INBOUND_LOOKUP)?;
        load(lookup.load(), programs::INBOUND_LOOKUP)?;

        let enrolled = HashMap::try_from(take_map(&mut ebpf, maps::ENROLLED)?)
            .map_err(|e| map_error(maps::ENROLLED, e))?;
        let pod_addrs = HashMap::try_from(take_map(&mut ebpf, maps::POD_ADDRS)?)
            .map_err(|e| map_error(maps::POD_ADDRS, e))?;
        let inbound_socks = SockHash::try_from(take_map(&mut ebpf, maps::INBOUND_SOCKS)?)
            .map_err(|e| map_error(maps::INBOUND_SOCKS, e))?;
        Ok(Self {
            ebpf,
            enrolled,
            pod_addrs,
            inbound_socks,
            links_dir,
        })
    }

    /// Marks a pod's addresses as enrolled, so inbound to them fails closed without a socket.
    pub fn add_pod_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), CaptureError> {
        for addr in addrs {
            self.pod_addrs
                .insert(ip_key(*addr), 1, 0)
                .map_err(|e| map_error(maps::POD_ADDRS, e))?;
        }
        Ok(())
    }

    /// Steers inbound connections to `addr` to `listener` (the pod's :15006 socket).
    pub fn set_inbound_socket(
        &mut self,
        addr: IpAddr,
        listener: &impl AsRawFd,
    ) -> Result<(), CaptureError> {
        self.inbound_socks
            .insert(ip_key(addr), listener.as_raw_fd(), 0)
            .map_err(|e| map_error(maps::INBOUND_SOCKS, e))
    }

    /// Attaches `sk_lookup` to a pod's netns and pins the link, unless a pin already exists.
    pub fn attach_inbound(&mut self, netns: &crate::netns::PodNetns) -> Result<(), CaptureError> {
        let pin = sk_lookup_pin(&self.links_dir, netns.cookie());
        if pin.exists() {
            return Ok(());
        }
        let prog: &mut SkLookup = program(&mut self.ebpf, programs::INBOUND_LOOKUP)?;
        let id = prog
            .attach(netns.fd())
            .map_err(|e| program_error("attaching", programs::INBOUND_LOOKUP, e))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|e| program_error("taking link of", programs::INBOUND_LOOKUP, e))?
            .into();
        link.pin(&pin)
            .map_err(|e| program_error("pinning", programs::INBOUND_LOOKUP, e))?;
        Ok(())
    }

    /// Starts outbound capture for a netns (the last step of enrolling a pod).
    pub fn enroll_netns(&mut self, cookie: u64) -> Result<(), CaptureError> {
        self.enrolled
            .insert(cookie, 1, 0)
            .map_err(|e| map_error(maps::ENROLLED, e))
    }

    /// Is outbound capture on for this netns?
    pub fn is_enrolled(&self, cookie: u64) -> bool {
        self.enrolled.get(&cookie, 0).is_ok()
    }

    /// Is there a live inbound socket for this address?
    ///
    /// The kernel answers a user-space lookup in a SOCKHASH only for 8-byte values (the socket
    /// cookie), so this walks the keys instead: sockets leave the map when they close.
    pub fn has_inbound_socket(&self, addr: IpAddr) -> bool {
        let key = ip_key(addr);
        self.inbound_socks.keys().any(|k| k.is_ok_and(|k| k == key))
    }

    /// Is the `sk_lookup` link of this netns pinned?
    pub fn has_inbound_link(&self, cookie: u64) -> bool {
        sk_lookup_pin(&self.links_dir, cookie).exists()
    }

    /// Undoes every capture of a pod. Missing entries are not errors: removal is idempotent.
    pub fn remove_pod(&mut self, cookie: u64, addrs: &[IpAddr]) -> Result<(), CaptureError> {
        ignore_missing(self.enrolled.remove(&cookie), maps::ENROLLED)?;
        for addr in addrs {
            let key = ip_key(*addr);
            ignore_missing(self.inbound_socks.remove(&key), maps::INBOUND_SOCKS)?;
            ignore_missing(self.pod_addrs.remove(&key), maps::POD_ADDRS)?;
        }
        let pin = sk_lookup_pin(&self.links_dir, cookie);
        match PinnedLink::from_pin(&pin) {
            // Unpinning and dropping our descriptor detaches the program from the netns.
            Ok(link) => {
                link.unpin()
                    .map_err(|e| program_error("unpinning", programs::INBOUND_LOOKUP, e))?;
            }
            Err(_) if !pin.exists() => {}
            Err(e) => return Err(program_error("opening pinned", programs::INBOUND_LOOKUP, e)),
        }
        Ok(())
    }
}

/// The map key of a pod address.
pub fn ip_key(addr: IpAddr) -> IpKey {
    match addr {
        IpAddr::V4(v4) => IpKey::from_octets(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => IpKey::from_octets(v6.octets()),
    }
}

/// Removes everything this proxy pinned (maps and links): capture ends for every pod.
pub fn remove_pins(bpffs_dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(bpffs_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn sk_lookup_pin(links_dir: &Path, cookie: u64) -> PathBuf {
    links_dir.join(format!("sk_lookup-{cookie}"))
}

fn attach_pinned(
    links_dir: &Path,
    name: &'static str,
    attach: impl FnOnce() -> Result<FdLink, Box<dyn std::error::Error + Send + Sync>>,
) -> Result<(), CaptureError> {
    let pin = links_dir.join(name);
    if pin.exists() {
        tracing::info!(program = name, pin = %pin.display(), "re-using pinned link");
        return Ok(());
    }
    let link = attach().map_err(|source| CaptureError::Program {
        action: "attaching",
        program: name,
        source,
    })?;
    link.pin(&pin)
        .map_err(|e| program_error("pinning", name, e))?;
    tracing::info!(program = name, pin = %pin.display(), "attached and pinned");
    Ok(())
}

/// Mounts bpffs at `/sys/fs/bpf` when the pin directory is below it and it is not mounted.
fn ensure_bpffs(dir: &Path) -> Result<(), CaptureError> {
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    let err = |source| CaptureError::Bpffs {
        path: root.to_path_buf(),
        source,
    };
    fs::create_dir_all(root).map_err(err)?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| err(io::Error::other(e)));
    let (src, target, fstype) = (c("bpf")?, c("/sys/fs/bpf")?, c("bpf")?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed plain-data struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == BPF_FS_MAGIC }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(CaptureError::Missing(name))?;
    prog.try_into()
        .map_err(|e| program_error("typing", name, e))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
    ebpf.take_map(name).ok_or(CaptureError::Missing(name))
}

fn load(result: Result<(), ProgramError>, name: &'static str) -> Result<(), CaptureError> {
    result.map_err(|e| program_error("loading", name, e))
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

fn program_error<E: std::error::Error + Send + Sync + 'static>(
    action: &'static str,
    program: &'static str,
    e: E,
) -> CaptureError {
    CaptureError::Program {
        action,
        program,
        source: Box::new(e),
    }
}

fn map_error(map: &'static str, e: MapError) -> CaptureError {
    CaptureError::Map {
        map,
        source: Box::new(e),
    }
}

fn ignore_missing(result: Result<(), MapError>, map: &'static str) -> Result<(), CaptureError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(e) => Err(map_error(map, e)),
    }
}
