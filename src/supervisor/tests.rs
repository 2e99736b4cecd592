use super::*;

#[test]
fn a_passed_deadline_is_cleared_and_a_future_one_kept() {
    let now = Instant::now();
    let mut none = None;
    assert!(!expire(&mut none, now));
    let mut past = Some(now);
    assert!(!expire(&mut past, now), "a deadline at `now` has passed");
    assert_eq!(past, None);
    let ahead = now + Duration::from_millis(100);
    let mut future = Some(ahead);
    assert!(expire(&mut future, now));
    assert_eq!(future, Some(ahead));
    assert!(!expire(&mut future, ahead + Duration::from_millis(1)));
    assert_eq!(future, None);
}

#[test]
fn recycle_keeps_the_poll_sets_memory() {
    let f = std::fs::File::open("/dev/null").expect("open");
    let mut v: Vec<PollFd<'_>> = Vec::with_capacity(8);
    v.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
    let (ptr, cap) = (v.as_ptr() as usize, v.capacity());
    let back: Vec<PollFd<'static>> = recycle(v);
    assert!(back.is_empty());
    assert_eq!((back.as_ptr() as usize, back.capacity()), (ptr, cap));
}
