//! Rollback protection (SPEC §11, "Rollback"): a signature proves who packed an artifact, not
//! that it is the newest one, so whoever can write the source could publish an older signed
//! artifact again — or the very artifact that was revoked. With a verify key the agent keeps a
//! *high-water mark*, the newest signed `packedAt` it has seen, and refuses anything older.
//!
//! Only signed times move the mark. An accepted artifact leaves its `packedAt` (its signature
//! covers it). A revocation notice marks the `packedAt` of the artifact in service as revoked,
//! so that very artifact cannot come back either — `clef revoke` writes bare, unsigned notices,
//! so the notice contributes the event, never a time of its own — and, when the notice still
//! carries an artifact's fields and their signature verifies, that signed `packedAt` too.
//! `revokedAt` is covered by no signature (the `clef-sig-v3` payload has no line for it), so it
//! never moves the mark: an unsigned notice with a `revokedAt` far in the future would otherwise
//! lock out every artifact packed until then. A signed `packedAt` is a time the signer really
//! packed at, so a newer pack always gets past the mark.
//!
//! Everything here is pure; the pipeline (`refresh/pipeline.rs`) applies it and the disk cache
//! keeps the encoded mark.

use std::fmt;

use serde_json::{json, Value};

use super::Rejection;
use crate::time::parse_iso8601_ms;

/// A `packedAt` as written and as epoch milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedAt {
    pub text: String,
    pub epoch_ms: i64,
}

impl PackedAt {
    /// Reads an artifact's `packedAt`. With a verify key it must be a timestamp: it is what
    /// the mark compares.
    pub fn parse(text: &str) -> Result<PackedAt, Rejection> {
        match parse_iso8601_ms(text) {
            Some(epoch_ms) => Ok(PackedAt { text: text.to_string(), epoch_ms }),
            None => Err(Rejection::InvalidShape {
                field: "packedAt",
                expected: "an ISO-8601 timestamp",
                found: "a string that is not one".into(),
            }),
        }
    }
}

/// The newest signed `packedAt` seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HighWaterMark {
    pub packed_at: PackedAt,
    /// A signed revocation notice carried this `packedAt`: the artifact packed then is dead
    /// too, not only older ones.
    pub revoked: bool,
}

impl HighWaterMark {
    /// The mark an accepted artifact leaves.
    pub fn accepted(packed_at: PackedAt) -> HighWaterMark {
        HighWaterMark { packed_at, revoked: false }
    }

    /// The mark a signed revocation notice leaves.
    pub fn revoked(packed_at: PackedAt) -> HighWaterMark {
        HighWaterMark { packed_at, revoked: true }
    }

    /// At the same instant a revocation outranks an acceptance.
    fn rank(&self) -> (i64, bool) {
        (self.packed_at.epoch_ms, self.revoked)
    }

    /// The file the disk cache keeps: no secret, only the timestamp and the flag.
    pub fn encode(&self) -> Vec<u8> {
        json!({ "packedAt": self.packed_at.text, "revoked": self.revoked }).to_string().into_bytes()
    }

    /// Reads [`HighWaterMark::encode`]'s output; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<HighWaterMark, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|error| format!("it is not JSON ({error})"))?;
        let text = value.get("packedAt").and_then(Value::as_str).ok_or("it has no 'packedAt' string")?;
        let packed_at = PackedAt::parse(text).map_err(|_| format!("its 'packedAt' ({text:?}) is not a timestamp"))?;
        let revoked = value.get("revoked").and_then(Value::as_bool).ok_or("it has no 'revoked' boolean")?;
        Ok(HighWaterMark { packed_at, revoked })
    }
}

/// An artifact older than the mark (or as old as a revoked one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    pub packed_at: String,
    pub mark: HighWaterMark,
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Rollback { packed_at, mark } = self;
        if mark.revoked {
            write!(
                f,
                "the artifact was packed at {packed_at}, not after the revoked artifact (packed at {}): \
                 a revoked or older artifact was published again",
                mark.packed_at.text
            )
        } else {
            write!(
                f,
                "the artifact was packed at {packed_at}, older than the one in service (packed at {}): \
                 an older artifact was published again",
                mark.packed_at.text
            )
        }
    }
}

impl std::error::Error for Rollback {}

/// The decision: may an artifact packed at `packed_at` replace what the mark stands for? The
/// same `packedAt` as the artifact in service is no rollback (a poll that finds it again, or
/// the reload after a wipe); a newer one is accepted even when it is in the future.
pub fn check_freshness(packed_at: &PackedAt, mark: Option<&HighWaterMark>) -> Result<(), Rollback> {
    let Some(mark) = mark else { return Ok(()) };
    let too_old = if mark.revoked {
        packed_at.epoch_ms <= mark.packed_at.epoch_ms
    } else {
        packed_at.epoch_ms < mark.packed_at.epoch_ms
    };
    if too_old {
        Err(Rollback { packed_at: packed_at.text.clone(), mark: mark.clone() })
    } else {
        Ok(())
    }
}

/// The mark after `seen`: it only ever moves forward. `None` when it stays where it was.
pub fn raised(mark: Option<&HighWaterMark>, seen: HighWaterMark) -> Option<HighWaterMark> {
    match mark {
        Some(mark) if mark.rank() >= seen.rank() => None,
        _ => Some(seen),
    }
}

/// The mark after a revocation notice: the newest artifact accepted is revoked, and so is the
/// notice's own `packedAt` when its signature verified. `None` when it stays where it was.
pub fn after_revocation(mark: Option<&HighWaterMark>, signed_packed_at: Option<PackedAt>) -> Option<HighWaterMark> {
    let in_service = mark.map(|mark| mark.packed_at.clone());
    let newest =
        in_service.into_iter().chain(signed_packed_at).map(HighWaterMark::revoked).max_by_key(HighWaterMark::rank)?;
    raised(mark, newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> PackedAt {
        PackedAt::parse(text).unwrap()
    }

    const OLDER: &str = "2026-11-24T12:00:00.000Z";
    const NEWER: &str = "2026-11-25T12:00:00.000Z";
    const FUTURE: &str = "2099-01-01T00:00:00Z";

    #[test]
    fn refuses_only_what_is_older_than_the_mark_or_as_old_as_a_revoked_artifact() {
        let accepted = |text| Some(HighWaterMark::accepted(at(text)));
        let revoked = |text| Some(HighWaterMark::revoked(at(text)));
        // (packedAt, mark, accepted?)
        let table: [(&str, Option<HighWaterMark>, bool); 10] = [
            (OLDER, None, true),
            (NEWER, accepted(NEWER), true),
            // The same instant written another way is the same instant.
            ("2026-11-25T13:00:00+01:00", accepted(NEWER), true),
            (OLDER, accepted(NEWER), false),
            ("2026-11-25T11:59:59.999Z", accepted(NEWER), false),
            (NEWER, accepted(OLDER), true),
            (FUTURE, accepted(NEWER), true),
            (NEWER, revoked(NEWER), false),
            (OLDER, revoked(NEWER), false),
            ("2026-11-25T12:00:00.001Z", revoked(NEWER), true),
        ];
        for (packed_at, mark, accepted) in table {
            let verdict = check_freshness(&at(packed_at), mark.as_ref());
            assert_eq!(verdict.is_ok(), accepted, "{packed_at} against {mark:?}: {verdict:?}");
        }
    }

    #[test]
    fn the_refusal_names_both_timestamps() {
        let refusal = check_freshness(&at(OLDER), Some(&HighWaterMark::accepted(at(NEWER)))).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "the artifact was packed at 2026-11-24T12:00:00.000Z, older than the one in service \
             (packed at 2026-11-25T12:00:00.000Z): an older artifact was published again"
        );
        let refusal = check_freshness(&at(NEWER), Some(&HighWaterMark::revoked(at(NEWER)))).unwrap_err();
        assert!(refusal.to_string().contains("not after the revoked artifact (packed at 2026-11-25T12:00:00.000Z)"));
    }

    #[test]
    fn the_mark_only_moves_forward_and_a_revocation_outranks_an_acceptance_at_the_same_instant() {
        let accepted = |text| HighWaterMark::accepted(at(text));
        let revoked = |text| HighWaterMark::revoked(at(text));
        // (mark, seen, moves?)
        let table = [
            (None, accepted(OLDER), true),
            (Some(accepted(OLDER)), accepted(NEWER), true),
            (Some(accepted(NEWER)), accepted(OLDER), false),
            (Some(accepted(NEWER)), accepted(NEWER), false),
            (Some(accepted(NEWER)), revoked(NEWER), true),
            (Some(revoked(NEWER)), accepted(NEWER), false),
            (Some(revoked(NEWER)), revoked(OLDER), false),
            (Some(revoked(OLDER)), accepted(FUTURE), true),
        ];
        for (mark, seen, moves) in table {
            let after = raised(mark.as_ref(), seen.clone());
            assert_eq!(after, moves.then_some(seen), "from {mark:?}");
        }
    }

    #[test]
    fn a_revocation_revokes_the_artifact_in_service_and_a_signed_notice_its_own_packed_at() {
        let accepted = |text| HighWaterMark::accepted(at(text));
        let revoked = |text| HighWaterMark::revoked(at(text));
        // (mark, the notice's signed packedAt, mark after)
        let table = [
            // A bare notice before anything was accepted has no signed time to offer.
            (None, None, None),
            (Some(accepted(NEWER)), None, Some(revoked(NEWER))),
            (Some(revoked(NEWER)), None, None),
            (None, Some(at(OLDER)), Some(revoked(OLDER))),
            (Some(accepted(NEWER)), Some(at(OLDER)), Some(revoked(NEWER))),
            (Some(accepted(OLDER)), Some(at(NEWER)), Some(revoked(NEWER))),
        ];
        for (mark, signed, after) in table {
            assert_eq!(after_revocation(mark.as_ref(), signed.clone()), after, "{mark:?} and {signed:?}");
        }
    }

    #[test]
    fn a_packed_at_that_is_not_a_timestamp_is_refused_naming_the_field() {
        let refusal = PackedAt::parse("yesterday").unwrap_err();
        assert_eq!(refusal.reason(), "invalid_shape");
        assert!(refusal.to_string().starts_with("field 'packedAt' must be an ISO-8601 timestamp"));
    }

    #[test]
    fn the_mark_file_round_trips_and_a_damaged_one_says_what_is_wrong() {
        let mark = HighWaterMark::revoked(at(NEWER));
        assert_eq!(
            String::from_utf8(mark.encode()).unwrap(),
            r#"{"packedAt":"2026-11-25T12:00:00.000Z","revoked":true}"#
        );
        assert_eq!(HighWaterMark::decode(&mark.encode()), Ok(mark));
        let table: [(&[u8], &str); 5] = [
            (b"", "it is not JSON"),
            (b"{\"packedAt\":\"2026-11-25T1", "it is not JSON"),
            (br#"{"revoked":false}"#, "it has no 'packedAt' string"),
            (br#"{"packedAt":"soon","revoked":false}"#, "its 'packedAt' (\"soon\") is not a timestamp"),
            (br#"{"packedAt":"2026-11-25T12:00:00Z","revoked":"no"}"#, "it has no 'revoked' boolean"),
        ];
        for (bytes, error) in table {
            let decoded = HighWaterMark::decode(bytes);
            assert!(decoded.as_ref().is_err_and(|found| found.starts_with(error)), "{bytes:?}: {decoded:?}");
        }
    }
}
