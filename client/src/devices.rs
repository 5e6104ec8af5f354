//! Which devices a message goes to, for sends with one body per device.
//!
//! A message to a user goes to every device of that user and to the
//! sender's other devices (a copy, so every device of the account shows the
//! conversation). An app that encrypts for each device sends one envelope
//! per device ([`crate::Session::send_envelopes`]), so it must know that set;
//! it keeps the device lists it learned (`GET /v1/users/{id}/devices`) and
//! the server tells it when one is stale: `SendError{DEVICES_CHANGED}` with
//! the devices it missed and the ones it named wrongly, nothing queued.
//! [`Fanout`] is that set, and [`Fanout::apply`] fixes it from the error, so
//! the app can resend (with the same `client_msg_id`: nothing was accepted).
//!
//! The set follows the server's rule exactly: the recipient's devices, then
//! the sender's devices but the sending one; a message to oneself goes to
//! every device of one's own, the sending one too.

use std::collections::BTreeSet;

use bytes::Bytes;
use parley_proto::v1::{DeviceAddress, ErrorCode, SendError};

/// The devices one message goes to, as the sending device believes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fanout {
    to_user: u64,
    /// The recipient's devices.
    to_devices: BTreeSet<u64>,
    sender_user: u64,
    sender_device: u64,
    /// The sender's devices, the sending one included (whatever the list it
    /// was given said). Unused for a message to oneself, where
    /// `to_devices` is the account's list.
    sender_devices: BTreeSet<u64>,
}

/// The devices of a `DEVICES_CHANGED` refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicesChanged<'a> {
    /// Devices the message goes to that the envelopes missed.
    pub missing: &'a [DeviceAddress],
    /// Devices the envelopes named that it does not go to (not, or no
    /// longer, devices of the recipient or of the sender).
    pub extra: &'a [DeviceAddress],
}

/// The missing and extra devices when `error` is `DEVICES_CHANGED`.
pub fn devices_changed(error: &SendError) -> Option<DevicesChanged<'_>> {
    (error.code == ErrorCode::DevicesChanged as i32).then_some(DevicesChanged {
        missing: &error.missing_devices,
        extra: &error.extra_devices,
    })
}

/// Why a `DEVICES_CHANGED` cannot be applied to a [`Fanout`]: resending
/// would be refused again, so the app must stop (and refetch the lists).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FanoutError {
    /// The server named a device of a user that is neither the recipient
    /// nor the sender.
    #[error(
        "the server named device {device_id} of user {user_id}, who is not in this conversation"
    )]
    Stranger { user_id: u64, device_id: u64 },
    /// Nothing to add or remove: the same list would be refused again.
    #[error(
        "the server reported changed devices but named none that this list lacks or has too many"
    )]
    NothingChanged,
}

impl Fanout {
    /// The devices a message from `sender_device` of `sender_user` to
    /// `to_user` goes to, given the device lists the app knows. The sending
    /// device is taken as one of the sender's whether or not the list says
    /// so.
    pub fn new(
        to_user: u64,
        to_devices: impl IntoIterator<Item = u64>,
        sender_user: u64,
        sender_device: u64,
        sender_devices: impl IntoIterator<Item = u64>,
    ) -> Self {
        let mut sender_devices: BTreeSet<u64> = sender_devices.into_iter().collect();
        sender_devices.insert(sender_device);
        let mut to_devices: BTreeSet<u64> = to_devices.into_iter().collect();
        if to_user == sender_user {
            to_devices.extend(sender_devices.iter().copied());
        }
        Self {
            to_user,
            to_devices,
            sender_user,
            sender_device,
            sender_devices,
        }
    }

    pub fn to_user(&self) -> u64 {
        self.to_user
    }

    fn to_self(&self) -> bool {
        self.to_user == self.sender_user
    }

    /// `(user_id, device_id)` of every device the message goes to: the
    /// recipient's, then the sender's others, each in id order.
    pub fn targets(&self) -> Vec<(u64, u64)> {
        let mut targets: Vec<(u64, u64)> =
            self.to_devices.iter().map(|&d| (self.to_user, d)).collect();
        if !self.to_self() {
            targets.extend(
                self.sender_devices
                    .iter()
                    .filter(|&&d| d != self.sender_device)
                    .map(|&d| (self.sender_user, d)),
            );
        }
        targets
    }

    /// One envelope per target, each with the same `body` (an app that
    /// encrypts uses [`Fanout::envelopes_with`]).
    pub fn envelopes(&self, body: &Bytes) -> Vec<(u64, u64, Bytes)> {
        self.envelopes_with(|_, _| body.clone())
    }

    /// One envelope per target, its body made for that device.
    pub fn envelopes_with(
        &self,
        mut body: impl FnMut(u64, u64) -> Bytes,
    ) -> Vec<(u64, u64, Bytes)> {
        self.targets()
            .into_iter()
            .map(|(user, device)| (user, device, body(user, device)))
            .collect()
    }

    /// The devices of `user` as this fanout now knows them (the sender's
    /// include the sending device), to keep for the next send; empty for
    /// anyone else.
    pub fn devices_of(&self, user: u64) -> Vec<u64> {
        if user == self.to_user {
            self.to_devices.iter().copied().collect()
        } else if user == self.sender_user {
            self.sender_devices.iter().copied().collect()
        } else {
            Vec::new()
        }
    }

    /// Adds the missing devices and drops the extra ones, as the server's
    /// `DEVICES_CHANGED` says; the message can then be resent.
    pub fn apply(&mut self, changed: DevicesChanged<'_>) -> Result<(), FanoutError> {
        let before = self.clone();
        for (addresses, add) in [(changed.missing, true), (changed.extra, false)] {
            for address in addresses {
                let DeviceAddress { user_id, device_id } = *address;
                let set = if user_id == self.to_user {
                    &mut self.to_devices
                } else if user_id == self.sender_user {
                    &mut self.sender_devices
                } else {
                    *self = before;
                    return Err(FanoutError::Stranger { user_id, device_id });
                };
                if add {
                    set.insert(device_id);
                } else {
                    set.remove(&device_id);
                }
            }
        }
        if self.targets() == before.targets() {
            return Err(FanoutError::NothingChanged);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: u64 = 1;
    const BOB: u64 = 2;

    fn at(user_id: u64, device_id: u64) -> DeviceAddress {
        DeviceAddress { user_id, device_id }
    }

    #[test]
    fn every_device_of_the_recipient_and_the_senders_others() {
        // Alice's phone (10) writes to Bob (20, 21); her laptop (11) gets a copy.
        let fanout = Fanout::new(BOB, [21, 20], ALICE, 10, [10, 11]);
        assert_eq!(fanout.targets(), [(BOB, 20), (BOB, 21), (ALICE, 11)]);
        // The sending device is one of the sender's even if the list forgot it.
        let forgot = Fanout::new(BOB, [20], ALICE, 10, [11]);
        assert_eq!(forgot.devices_of(ALICE), [10, 11]);
        assert_eq!(forgot.targets(), [(BOB, 20), (ALICE, 11)]);
        assert!(fanout.devices_of(99).is_empty());
        let bodies = fanout.envelopes_with(|user, device| Bytes::from(format!("{user}/{device}")));
        assert_eq!(bodies[2], (ALICE, 11, Bytes::from_static(b"1/11")));
    }

    #[test]
    fn a_message_to_oneself_goes_to_every_own_device() {
        let fanout = Fanout::new(ALICE, [11], ALICE, 10, [10, 11, 12]);
        assert_eq!(fanout.targets(), [(ALICE, 10), (ALICE, 11), (ALICE, 12)]);
    }

    #[test]
    fn a_stale_list_is_fixed_from_the_servers_answer() {
        let mut fanout = Fanout::new(BOB, [20, 29], ALICE, 10, [10]);
        let error = SendError {
            client_msg_id: 5,
            code: ErrorCode::DevicesChanged as i32,
            missing_devices: vec![at(BOB, 21), at(ALICE, 11)],
            extra_devices: vec![at(BOB, 29)],
            ..SendError::default()
        };
        let changed = devices_changed(&error).expect("DEVICES_CHANGED");
        fanout.apply(changed).expect("applies");
        assert_eq!(fanout.targets(), [(BOB, 20), (BOB, 21), (ALICE, 11)]);
        assert_eq!(fanout.devices_of(BOB), [20, 21]);
        assert_eq!(fanout.devices_of(ALICE), [10, 11]);
        // The same answer again changes nothing: stop rather than loop.
        assert_eq!(fanout.apply(changed), Err(FanoutError::NothingChanged));
        let other = SendError {
            code: ErrorCode::MailboxFull as i32,
            ..error
        };
        assert!(devices_changed(&other).is_none());
    }

    #[test]
    fn a_stranger_device_is_refused_and_changes_nothing() {
        let mut fanout = Fanout::new(BOB, [20], ALICE, 10, [10]);
        let before = fanout.clone();
        let missing = [at(BOB, 21), at(77, 1)];
        let err = fanout
            .apply(DevicesChanged {
                missing: &missing,
                extra: &[],
            })
            .expect_err("a stranger");
        assert_eq!(
            err,
            FanoutError::Stranger {
                user_id: 77,
                device_id: 1
            }
        );
        assert_eq!(fanout, before);
    }
}
