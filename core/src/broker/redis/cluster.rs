//! Redis Cluster routing for sharded pub/sub: hash slots and the slot map
//! read with `CLUSTER SLOTS`.

use super::resp::Resp;

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster uses for key slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key or shard channel, honouring `{hash tags}`.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// Which master serves which slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// `(first, last, "host:port")`, sorted by `first`.
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply.
    pub fn from_cluster_slots(reply: &Resp) -> Option<SlotMap> {
        let Resp::Array(entries) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Resp::Array(fields) = entry else {
                return None;
            };
            let (Some(Resp::Int(first)), Some(Resp::Int(last)), Some(Resp::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = std::str::from_utf8(master.first()?.as_bytes()?).ok()?;
            let Some(Resp::Int(port)) = master.get(1) else {
                return None;
            };
            let host = if host.is_empty() { "127.0.0.1" } else { host };
            ranges.push((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                format!("{host}:{port}"),
            ));
        }
        ranges.sort();
        Some(SlotMap { ranges })
    }

    /// The master serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, a)| a.as_str())
    }

    /// Every master address, once.
    pub fn masters(&self) -> Vec<String> {
        let mut all: Vec<String> = self.ranges.iter().map(|(_, _, a)| a.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Whether every slot has an owner.
    pub fn is_complete(&self) -> bool {
        let mut next: u32 = 0;
        for (first, last, _) in &self.ranges {
            if u32::from(*first) > next {
                return false;
            }
            next = next.max(u32::from(*last) + 1);
        }
        next == u32::from(SLOTS)
    }
}

/// The channels whose owner in `map` is not their `current` one, each with
/// its new owner (`None` when no master serves its slot). A pure function of
/// the routing table and the new map, so every failover and migration case
/// is unit-tested without a cluster.
pub fn moves<C: AsRef<[u8]>>(
    map: &SlotMap,
    current: impl IntoIterator<Item = (C, Option<String>)>,
) -> Vec<(C, Option<String>)> {
    current
        .into_iter()
        .filter_map(|(channel, owner)| {
            let new = map.owner(slot(channel.as_ref())).map(str::to_owned);
            (new != owner).then_some((channel, new))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "empty tag: whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    fn node(host: &str, port: i64) -> Resp {
        Resp::Array(vec![
            Resp::Bulk(Bytes::copy_from_slice(host.as_bytes())),
            Resp::Int(port),
        ])
    }

    #[test]
    fn slot_map_routes_and_checks_coverage() {
        let reply = Resp::Array(vec![
            Resp::Array(vec![
                Resp::Int(5461),
                Resp::Int(10922),
                node("127.0.0.1", 7001),
            ]),
            Resp::Array(vec![Resp::Int(0), Resp::Int(5460), node("127.0.0.1", 7000)]),
            Resp::Array(vec![Resp::Int(10923), Resp::Int(16383), node("", 7002)]),
        ]);
        let map = SlotMap::from_cluster_slots(&reply).unwrap();
        assert!(map.is_complete());
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383), Some("127.0.0.1:7002"));
        assert_eq!(map.masters().len(), 3);
        let partial = Resp::Array(vec![Resp::Array(vec![
            Resp::Int(0),
            Resp::Int(100),
            node("h", 1),
        ])]);
        assert!(!SlotMap::from_cluster_slots(&partial).unwrap().is_complete());
    }

    fn map(ranges: &[(i64, i64, u16)]) -> SlotMap {
        SlotMap::from_cluster_slots(&Resp::Array(
            ranges
                .iter()
                .map(|(a, b, port)| {
                    Resp::Array(vec![
                        Resp::Int(*a),
                        Resp::Int(*b),
                        node("127.0.0.1", i64::from(*port)),
                    ])
                })
                .collect(),
        ))
        .unwrap()
    }

    #[test]
    fn a_failover_moves_exactly_the_channels_of_the_failed_master() {
        let before = map(&[(0, 5460, 7000), (5461, 10922, 7001), (10923, 16383, 7002)]);
        // The replica on 7004 took over 7001's slots.
        let after = map(&[(0, 5460, 7000), (5461, 10922, 7004), (10923, 16383, 7002)]);
        let channels: Vec<String> = (0..200).map(|i| format!("herald:{{t{i}}}")).collect();
        let current: Vec<(&str, Option<String>)> = channels
            .iter()
            .map(|c| {
                (
                    c.as_str(),
                    before.owner(slot(c.as_bytes())).map(str::to_owned),
                )
            })
            .collect();
        assert!(moves(&before, current.clone()).is_empty(), "nothing moves");
        let moved = moves(&after, current.clone());
        let expected = current
            .iter()
            .filter(|(_, o)| o.as_deref() == Some("127.0.0.1:7001"))
            .count();
        assert!(expected > 0);
        assert_eq!(moved.len(), expected);
        assert!(
            moved
                .iter()
                .all(|(_, o)| o.as_deref() == Some("127.0.0.1:7004"))
        );
        // An unrouted channel gets its owner; one whose slot nobody serves
        // stays unrouted.
        let partial = map(&[(0, 100, 7000)]);
        let names: Vec<String> = (0..20_000).map(|i| format!("herald:{{u{i}}}")).collect();
        let inside = names.iter().find(|c| slot(c.as_bytes()) <= 100).unwrap();
        let outside = names.iter().find(|c| slot(c.as_bytes()) > 100).unwrap();
        let routed = moves(
            &partial,
            vec![(inside.as_str(), None), (outside.as_str(), None)],
        );
        assert_eq!(
            routed,
            vec![(inside.as_str(), Some("127.0.0.1:7000".to_owned()))]
        );
    }
}
