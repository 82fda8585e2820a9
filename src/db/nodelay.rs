//! sqlx 0.9.0 leaves Nagle's algorithm on for its TCP connections (upstream issue #4335, fixed by
//! #4336, not released yet): a statement larger than one TCP segment, such as a batch's
//! multi-row insert, can then wait the peer's 40 ms delayed ACK. Until sqlx sets TCP_NODELAY
//! itself, every new database connection sets it on the process's sockets. Remove this module
//! with the sqlx upgrade that contains the fix.

/// Sets TCP_NODELAY on every socket of this process (harmless on sockets that have it, refused
/// and ignored on non-TCP ones).
pub fn disable_nagle() {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::BorrowedFd;
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            // SAFETY: the descriptor is open (just listed) and only borrowed for one setsockopt
            // call; if it was closed and reused meanwhile, the worst outcome is TCP_NODELAY on
            // another socket of ours.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
        }
    }
}
