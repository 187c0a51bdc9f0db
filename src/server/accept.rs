//! Content negotiation for the single-value routes: does a request's `Accept` prefer
//! `application/json` over `text/plain` (RFC 9110 §12.5.1)? Text stays the default, so a client
//! that sends nothing, `*/*`, or an `Accept` that cannot be read gets the bytes of the value.

/// True when the `Accept` header fields (all of them, read as one comma-separated list) give
/// `application/json` a higher quality than `text/plain`. Each type's quality comes from the
/// most specific range that matches it (`type/subtype`, then `type/*`, then `*/*`); a type no
/// range matches has quality 0. Ranges whose `q` is not a valid qvalue are skipped.
pub fn prefers_json(accept: &[&str]) -> bool {
    // parsed once per type asked about rather than collected, so that no request allocates
    let ranges = || accept.iter().flat_map(|field| field.split(',')).filter_map(Range::parse);
    let json = quality(ranges(), "application", "json");
    json > 0 && json > quality(ranges(), "text", "plain")
}

/// One media range with its quality in thousandths.
struct Range<'a> {
    kind: &'a str,
    subtype: &'a str,
    quality: u16,
}

impl<'a> Range<'a> {
    fn parse(text: &'a str) -> Option<Range<'a>> {
        let mut parameters = text.split(';');
        let (kind, subtype) = parameters.next()?.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
            return None;
        }
        let mut quality = 1000;
        for parameter in parameters {
            let Some((name, value)) = parameter.split_once('=') else { continue };
            if name.trim().eq_ignore_ascii_case("q") {
                quality = qvalue(value.trim())?;
                // Parameters after `q` are accept extensions (RFC 9110), not the media type's.
                break;
            }
        }
        Some(Range { kind, subtype, quality })
    }

    /// 3 for `type/subtype`, 2 for `type/*`, 1 for `*/*`, `None` when it does not match.
    fn specificity(&self, kind: &str, subtype: &str) -> Option<u8> {
        let kind_matches = self.kind.eq_ignore_ascii_case(kind);
        match (self.kind, self.subtype) {
            ("*", "*") => Some(1),
            (_, "*") if kind_matches => Some(2),
            _ if kind_matches && self.subtype.eq_ignore_ascii_case(subtype) => Some(3),
            _ => None,
        }
    }
}

/// The quality the most specific matching range gives `kind/subtype` (the first of equally
/// specific ones), 0 when none matches.
fn quality<'a>(ranges: impl Iterator<Item = Range<'a>>, kind: &str, subtype: &str) -> u16 {
    let mut best: Option<(u8, u16)> = None;
    for range in ranges {
        if let Some(specificity) = range.specificity(kind, subtype) {
            if best.is_none_or(|(best_specificity, _)| specificity > best_specificity) {
                best = Some((specificity, range.quality));
            }
        }
    }
    best.map_or(0, |(_, quality)| quality)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // "5" is 500 thousandths, "25" 250: the digits padded with zeros to three
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |sum, digit| sum * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_only_when_accept_ranks_it_above_text() {
        let cases: [(&[&str], bool); 22] = [
            (&[], false),
            (&["*/*"], false),
            (&["application/json"], true),
            (&["Application/JSON"], true),
            (&["application/json; charset=utf-8"], true),
            (&["application/*"], true),
            (&["text/plain"], false),
            (&["text/plain, application/json"], false),
            (&["application/json, text/plain"], false),
            (&["text/plain;q=0.5, application/json"], true),
            (&["application/json;q=0.9, text/plain;q=0.8"], true),
            (&["application/json;q=0.5, */*"], false),
            (&["application/json, */*;q=0.1"], true),
            (&["application/json, text/*;q=0.9"], true),
            (&["application/json;q=0"], false),
            (&["application/json;q=0.001"], true),
            (&["application/json; q=1.000"], true),
            (&["application/json;q=2", "text/plain;q=0.1"], false),
            (&["application/json;q=0.0001"], false),
            (&["text/plain;q=0.2", "application/json;q=0.3"], true),
            (&["image/png"], false),
            (&["garbage, ;;, /, */json"], false),
        ];
        for (accept, json) in cases {
            assert_eq!(prefers_json(accept), json, "{accept:?}");
        }
    }

    #[test]
    fn reads_qvalues_as_rfc_9110_writes_them() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.0"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.25"), Some(250));
        assert_eq!(qvalue("0"), Some(0));
        for bad in ["1.5", "2", "-1", "0.5000", ".5", "0.a", "", "+0.5"] {
            assert_eq!(qvalue(bad), None, "{bad}");
        }
    }
}
