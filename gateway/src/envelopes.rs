//! What a `Send` carries, checked: one body for every device, or one
//! envelope per device for apps that encrypt end to end. An envelope list
//! must name exactly the devices the message goes to (every device of the
//! recipient and the sender's other devices); otherwise the app is told
//! which are missing and which are extra, and nothing is queued.

use std::collections::BTreeSet;

use bytes::Bytes;
use parley_proto::limits::MAX_BODY_BYTES;
use parley_proto::v1::{DeviceAddress, Envelope};
use parley_router::{Device, Payload};

/// `DEVICES_CHANGED`: the devices the envelopes missed, and the extra ones.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DevicesChanged {
    pub(crate) missing: Vec<DeviceAddress>,
    pub(crate) extra: Vec<DeviceAddress>,
}

/// The form of a send's content, before the devices are known.
pub(crate) fn check_form(body: &Bytes, envelopes: &[Envelope]) -> Result<(), &'static str> {
    if envelopes.is_empty() {
        return if body.is_empty() {
            Err("body is empty")
        } else if body.len() > MAX_BODY_BYTES {
            Err("body over the 63 KiB limit")
        } else {
            Ok(())
        };
    }
    if !body.is_empty() {
        return Err("give a body or envelopes, not both");
    }
    let mut seen = BTreeSet::new();
    for envelope in envelopes {
        if envelope.body.is_empty() {
            return Err("an envelope's body is empty");
        }
        if envelope.body.len() > MAX_BODY_BYTES {
            return Err("an envelope's body is over the 63 KiB limit");
        }
        if !seen.insert((envelope.user_id, envelope.device_id)) {
            return Err("two envelopes for one device");
        }
    }
    Ok(())
}

/// The payload of a send whose form is checked, for `targets` (the devices
/// the message goes to now).
pub(crate) fn payload(
    body: Bytes,
    envelopes: Vec<Envelope>,
    targets: impl FnOnce() -> Vec<Device>,
) -> Result<Payload, DevicesChanged> {
    if envelopes.is_empty() {
        return Ok(Payload::Shared(body));
    }
    // Only per-device sends need the list (the router makes its own).
    let wanted: BTreeSet<Device> = targets().into_iter().collect();
    let given: BTreeSet<Device> = envelopes
        .iter()
        .map(|e| Device::new(e.user_id, e.device_id))
        .collect();
    let address = |d: &Device| DeviceAddress {
        user_id: d.user,
        device_id: d.device,
    };
    let missing: Vec<DeviceAddress> = wanted.difference(&given).map(address).collect();
    let extra: Vec<DeviceAddress> = given.difference(&wanted).map(address).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(DevicesChanged { missing, extra });
    }
    Ok(Payload::PerDevice(
        envelopes
            .into_iter()
            .map(|e| (Device::new(e.user_id, e.device_id), e.body))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(user: u64, device: u64) -> Envelope {
        Envelope {
            user_id: user,
            device_id: device,
            body: Bytes::from_static(b"sealed"),
        }
    }

    #[test]
    fn a_body_or_envelopes_but_not_both_and_none_empty() {
        let body = Bytes::from_static(b"hi");
        assert_eq!(check_form(&body, &[]), Ok(()));
        assert_eq!(check_form(&Bytes::new(), &[]), Err("body is empty"));
        assert!(check_form(&body, &[envelope(1, 1)]).is_err());
        assert_eq!(check_form(&Bytes::new(), &[envelope(1, 1)]), Ok(()));
        assert!(check_form(&Bytes::new(), &[envelope(1, 1), envelope(1, 1)]).is_err());
        let empty = Envelope {
            body: Bytes::new(),
            ..envelope(1, 1)
        };
        assert!(check_form(&Bytes::new(), &[empty]).is_err());
        let big = Bytes::from(vec![0; MAX_BODY_BYTES + 1]);
        assert!(check_form(&big, &[]).is_err());
    }

    #[test]
    fn a_stale_list_is_refused_with_the_missing_and_the_extra_devices() {
        let targets = [Device::new(2, 20), Device::new(2, 21), Device::new(1, 11)];
        let given = vec![envelope(2, 20), envelope(2, 29), envelope(1, 11)];
        match payload(Bytes::new(), given, || targets.to_vec()) {
            Err(DevicesChanged { missing, extra }) => {
                assert_eq!(
                    (
                        missing.len(),
                        missing[0].device_id,
                        extra.len(),
                        extra[0].device_id
                    ),
                    (1, 21, 1, 29)
                );
            }
            other => panic!("{other:?}"),
        }
        let fixed = vec![envelope(2, 21), envelope(2, 20), envelope(1, 11)];
        assert!(matches!(
            payload(Bytes::new(), fixed, || targets.to_vec()),
            Ok(Payload::PerDevice(bodies)) if bodies.len() == 3
        ));
        assert_eq!(
            payload(Bytes::from_static(b"x"), Vec::new(), || targets.to_vec()),
            Ok(Payload::Shared(Bytes::from_static(b"x")))
        );
    }
}
