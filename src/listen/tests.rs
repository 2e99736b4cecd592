use super::*;

#[test]
fn bind_sets_nonblocking_and_cloexec() {
    let l = bind(
        &Endpoint::Tcp("127.0.0.1:0".parse().unwrap()),
        &SockOpts::default(),
    )
    .unwrap();
    let fd = l.as_fd().as_raw_fd();
    let flags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert!(flags & libc::O_NONBLOCK != 0);
    let fdflags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert!(fdflags & libc::FD_CLOEXEC != 0, "fd {fd} not cloexec");
}

// `reconcile` itself is tested against the real daemon (tests/it/reload.rs):
// closing a socket to make room only frees its address if no other
// process holds a copy of the descriptor, and in this multithreaded
// test process any concurrent fork (a spawn test, a `getent` run by a
// config parse) briefly does.

#[test]
fn overlapping_addresses_are_same_family_same_port_one_wildcard() {
    let a = |s: &str| Endpoint::Tcp(s.parse().unwrap());
    assert!(overlaps(&a("127.0.0.1:80"), &a("0.0.0.0:80")));
    assert!(overlaps(&a("0.0.0.0:80"), &a("127.0.0.2:80")));
    assert!(overlaps(&a("[::]:80"), &a("[::1]:80")));
    assert!(!overlaps(&a("127.0.0.1:80"), &a("127.0.0.2:80")));
    assert!(!overlaps(&a("0.0.0.0:80"), &a("0.0.0.0:81")));
    assert!(!overlaps(&a("0.0.0.0:80"), &a("[::]:80")), "V6ONLY");
    assert!(!overlaps(&a("0.0.0.0:80"), &a("0.0.0.0:80")), "the same");
}

#[test]
fn a_udp_socket_is_bound_like_a_tcp_one_and_named_with_its_protocol() {
    // A TCP port first, then the same number over UDP: the two are
    // apart. (The other way round, the machine's TCP clients may hold
    // the number a UDP bind to port 0 picked; a UDP port is rarely
    // taken, and a few tries are bounded.)
    let none = SockOpts::default();
    let (l, _tcp, addr) = (0..20)
        .find_map(|_| {
            let tcp = bind(&Endpoint::Tcp("127.0.0.1:0".parse().unwrap()), &none).unwrap();
            let Listener::Tcp(t) = &tcp else {
                unreachable!()
            };
            let addr = t.local_addr().unwrap();
            bind(&Endpoint::Udp(addr), &none)
                .ok()
                .map(|l| (l, tcp, addr))
        })
        .expect("a UDP socket on a TCP socket's port");
    assert!(matches!(l, Listener::Udp(_)));
    let flags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert!(flags & libc::O_NONBLOCK != 0);
    let fdflags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert!(fdflags & libc::FD_CLOEXEC != 0);
    // Over UDP the port is taken, even for a socket that asks for
    // SO_REUSEADDR.
    let thief = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    socket::setsockopt(&thief, sockopt::ReuseAddr, &true).unwrap();
    assert_eq!(
        socket::bind(thief.as_raw_fd(), &SockaddrStorage::from(addr)),
        Err(Errno::EADDRINUSE)
    );
    let e = bind(&Endpoint::Udp(addr), &none).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("binding {addr}/udp: Address already in use")
    );
    let (u6, t4) = (
        |s: &str| Endpoint::Udp(s.parse().unwrap()),
        |s: &str| Endpoint::Tcp(s.parse().unwrap()),
    );
    assert!(overlaps(&u6("0.0.0.0:69"), &u6("127.0.0.1:69")));
    assert!(!overlaps(&u6("0.0.0.0:69"), &t4("127.0.0.1:69")));
}

#[test]
fn adopting_takes_a_datagram_socket_as_udp() {
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = u.local_addr().unwrap();
    let inh = Inherited {
        fd: u.as_raw_fd(),
        name: "x".into(),
    };
    match adopt(inh, Some(OwnedFd::from(u))) {
        Adoption::Listening(end, Listener::Udp(_)) => assert_eq!(end, Endpoint::Udp(addr)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_privileged_port_refused_says_what_it_needs() {
    let e = |port: u16| ListenError {
        addr: Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
        doing: "binding",
        errno: Errno::EACCES,
        reason: None,
    };
    assert_eq!(
        e(80).to_string(),
        "binding 127.0.0.1:80: Permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    );
    assert_eq!(
        e(8080).to_string(),
        "binding 127.0.0.1:8080: Permission denied"
    );
}

#[test]
fn bind_error_names_the_address() {
    let opts = SockOpts::default();
    let l = bind(&Endpoint::Tcp("127.0.0.1:0".parse().unwrap()), &opts).unwrap();
    let Listener::Tcp(l) = l else {
        panic!("a TCP socket")
    };
    let addr = l.local_addr().unwrap();
    let e = bind(&Endpoint::Tcp(addr), &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("binding {addr}: Address already in use")
    );
}
