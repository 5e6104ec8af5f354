//! The [`Directory`]: which users exist, which devices each has, and
//! whether a device's credential is still current.
//!
//! The registration service implements it over its SQL store; the gateway
//! asks it, through a [`CachedDirectory`], on the message path (who are the
//! recipient's devices, and the sender's), and the [`crate::Authenticator`]
//! asks it, uncached, at every login, and tells it when a device opens a
//! session ([`Directory::seen`]). Later: the members of a group.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::ids::{DeviceId, UserId};

/// A directory's answer, later.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = Result<T, DirectoryError>> + Send + 'a>>;

/// The directory could not answer (its database is down, say). The caller
/// refuses what it was doing with a retryable error; nothing is decided.
#[derive(Debug, thiserror::Error)]
#[error("directory unavailable: {0}")]
pub struct DirectoryError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl DirectoryError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }
}

/// A user's devices: the primary (registered by SMS) first, then the
/// linked ones in the order they were linked. Empty for no such user.
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Devices(Arc<[DeviceId]>);

impl Devices {
    /// `devices` with the primary first.
    pub fn new(devices: impl Into<Arc<[DeviceId]>>) -> Self {
        Self(devices.into())
    }

    /// No such user.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn primary(&self) -> Option<DeviceId> {
        self.0.first().copied()
    }

    pub fn contains(&self, device: DeviceId) -> bool {
        self.0.contains(&device)
    }

    pub fn iter(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.0.iter().copied()
    }

    pub fn as_slice(&self) -> &[DeviceId] {
        &self.0
    }
}

impl fmt::Debug for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// Who is who. Implementations must be cheap to share (`Arc<dyn Directory>`)
/// and must never block the caller's thread (they are asked from session
/// tasks).
pub trait Directory: Send + Sync + fmt::Debug + 'static {
    /// The generation of `device`'s credential if it is a device of `user`
    /// now; `None` if the user does not exist or the device is not (or no
    /// longer) one of theirs.
    fn credential(&self, user: UserId, device: DeviceId) -> Lookup<'_, Option<u64>>;

    /// The user's devices now ([`Devices::none`] for no such user).
    fn devices(&self, user: UserId) -> Lookup<'_, Devices>;

    /// `device` of `user` has a session now (the gateway says so when one
    /// opens and when it ends), for its "last seen" time: linked devices
    /// unseen for long are unlinked. Implementations may record it lazily
    /// (the store writes at most once an hour per device); callers must
    /// not wait on it, and a failure only delays the record.
    ///
    /// The default records nothing, for directories that keep no times.
    fn seen(&self, user: UserId, device: DeviceId) -> Lookup<'_, ()> {
        let _ = (user, device);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A [`Directory`] whose device lists are cached, for the message path,
/// where every send asks for two of them.
///
/// Only users that exist are cached (a user who registers a moment later
/// is found at the next ask). A cached list is dropped by
/// [`CachedDirectory::invalidate`], which whoever changes a user's devices
/// (linking, unlinking, re-registration) calls; in one process that is
/// immediate. The cache is bounded: when full it is cleared and refills.
/// Credentials are never cached: a revocation takes effect at once.
#[derive(Clone)]
pub struct CachedDirectory {
    inner: Arc<dyn Directory>,
    cache: Arc<Cache>,
}

struct Cache {
    users: Mutex<HashMap<UserId, Devices>>,
    capacity: usize,
    /// Bumped by every invalidation, so that a lookup that started before
    /// one does not put back the list it read (which may be the old one).
    epoch: AtomicU64,
}

impl fmt::Debug for CachedDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedDirectory")
            .field("inner", &self.inner)
            .field("capacity", &self.cache.capacity)
            .finish_non_exhaustive()
    }
}

impl CachedDirectory {
    /// Caches at most `capacity` users' device lists in front of `inner`.
    pub fn new(inner: Arc<dyn Directory>, capacity: usize) -> Self {
        Self {
            inner,
            cache: Arc::new(Cache {
                users: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
                epoch: AtomicU64::new(0),
            }),
        }
    }

    /// Forgets what is cached for `user`: their devices changed.
    pub fn invalidate(&self, user: UserId) {
        self.cache.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.lock().remove(&user);
    }

    /// The cached device list of `user`, if there is one: no future, no
    /// allocation, for the message path's common case.
    pub fn cached(&self, user: UserId) -> Option<Devices> {
        self.cache.lock().get(&user).cloned()
    }

    /// `user`'s devices: from the cache, else from the directory.
    pub async fn devices_of(&self, user: UserId) -> Result<Devices, DirectoryError> {
        match self.cached(user) {
            Some(devices) => Ok(devices),
            None => self.devices(user).await,
        }
    }

    /// The directory behind the cache.
    pub fn uncached(&self) -> &Arc<dyn Directory> {
        &self.inner
    }
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Devices>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Directory for CachedDirectory {
    fn credential(&self, user: UserId, device: DeviceId) -> Lookup<'_, Option<u64>> {
        self.inner.credential(user, device)
    }

    fn seen(&self, user: UserId, device: DeviceId) -> Lookup<'_, ()> {
        self.inner.seen(user, device)
    }

    fn devices(&self, user: UserId) -> Lookup<'_, Devices> {
        if let Some(devices) = self.cache.lock().get(&user) {
            let devices = devices.clone();
            return Box::pin(std::future::ready(Ok(devices)));
        }
        Box::pin(async move {
            let epoch = self.cache.epoch.load(Ordering::SeqCst);
            let devices = self.inner.devices(user).await?;
            if !devices.is_empty() {
                let mut users = self.cache.lock();
                // Checked under the lock that `invalidate` also takes after
                // bumping the epoch: no invalidation can slip in between.
                if self.cache.epoch.load(Ordering::SeqCst) == epoch {
                    if users.len() >= self.cache.capacity {
                        users.clear();
                    }
                    users.insert(user, devices.clone());
                }
            }
            Ok(devices)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A directory that counts its lookups.
    #[derive(Debug, Default)]
    struct Counting {
        devices: Mutex<HashMap<UserId, Vec<DeviceId>>>,
        lookups: AtomicUsize,
    }

    impl Directory for Counting {
        fn credential(&self, _: UserId, _: DeviceId) -> Lookup<'_, Option<u64>> {
            Box::pin(std::future::ready(Ok(Some(1))))
        }
        fn devices(&self, user: UserId) -> Lookup<'_, Devices> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let found = self
                .devices
                .lock()
                .expect("lock")
                .get(&user)
                .cloned()
                .unwrap_or_default();
            Box::pin(std::future::ready(Ok(Devices::new(found))))
        }
    }

    #[tokio::test]
    async fn lists_are_cached_until_invalidated_and_unknown_users_are_not() {
        let inner = Arc::new(Counting::default());
        inner.devices.lock().expect("lock").insert(1, vec![10, 11]);
        let cached = CachedDirectory::new(inner.clone(), 100);
        for _ in 0..3 {
            assert_eq!(cached.devices(1).await.expect("ok").as_slice(), [10, 11]);
            assert!(cached.devices(2).await.expect("ok").is_empty());
        }
        // One lookup for the known user; every ask for the unknown one.
        assert_eq!(inner.lookups.load(Ordering::SeqCst), 1 + 3);
        inner.devices.lock().expect("lock").insert(1, vec![10]);
        assert_eq!(cached.devices(1).await.expect("ok").as_slice(), [10, 11]);
        cached.invalidate(1);
        assert_eq!(cached.devices(1).await.expect("ok").as_slice(), [10]);
        assert_eq!(cached.devices(1).await.expect("ok").primary(), Some(10));
    }

    /// Records what it is told.
    #[derive(Debug, Default)]
    struct Seeing {
        seen: Mutex<Vec<(UserId, DeviceId)>>,
    }

    impl Directory for Seeing {
        fn credential(&self, _: UserId, _: DeviceId) -> Lookup<'_, Option<u64>> {
            Box::pin(std::future::ready(Ok(None)))
        }
        fn devices(&self, _: UserId) -> Lookup<'_, Devices> {
            Box::pin(std::future::ready(Ok(Devices::none())))
        }
        fn seen(&self, user: UserId, device: DeviceId) -> Lookup<'_, ()> {
            self.seen.lock().expect("lock").push((user, device));
            Box::pin(std::future::ready(Ok(())))
        }
    }

    #[tokio::test]
    async fn seen_goes_through_the_cache() {
        let inner = Arc::new(Seeing::default());
        let cached = CachedDirectory::new(inner.clone(), 10);
        cached.seen(1, 10).await.expect("ok");
        cached.seen(1, 10).await.expect("ok");
        assert_eq!(*inner.seen.lock().expect("lock"), [(1, 10), (1, 10)]);
        // Directories that keep no times need not implement it.
        Counting::default().seen(1, 10).await.expect("default");
    }

    #[tokio::test]
    async fn a_full_cache_is_cleared_and_refills() {
        let inner = Arc::new(Counting::default());
        for user in 1..=3 {
            inner.devices.lock().expect("lock").insert(user, vec![user]);
        }
        let cached = CachedDirectory::new(inner.clone(), 2);
        for user in 1..=3 {
            cached.devices(user).await.expect("ok");
        }
        assert_eq!(cached.cache.lock().len(), 1);
    }
}
