use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Formats fresh random bytes (from the caller's RNG) as an id.
            pub fn from_random(bytes: [u8; 10]) -> Self {
                let mut s = String::with_capacity(Self::PREFIX.len() + 20);
                s.push_str(Self::PREFIX);
                for b in bytes {
                    s.push_str(&format!("{b:02x}"));
                }
                $name(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Parses an id from user input: the prefix and 20 lowercase hex digits.
            pub fn parse(s: &str) -> Result<Self, Error> {
                let rest = s.strip_prefix(Self::PREFIX).ok_or_else(|| {
                    Error::invalid(format!(
                        "{} must start with {:?}, got {:?}",
                        stringify!($name),
                        Self::PREFIX,
                        truncate(s)
                    ))
                })?;
                if rest.len() != 20 || !rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(Error::invalid(format!(
                        "{} is malformed: {:?}",
                        stringify!($name),
                        truncate(s)
                    )));
                }
                Ok($name(s.to_owned()))
            }

            /// Wraps a value read back from our own database.
            pub fn from_trusted(s: String) -> Self {
                $name(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

typed_id!(
    /// A node: one machine running one agent.
    NodeId,
    "nd-"
);
typed_id!(OrgId, "org-");
typed_id!(ProjectId, "prj-");
typed_id!(
    /// The identifier of a macaroon, used for revocation.
    TokenId,
    "tok-"
);
typed_id!(JoinTokenId, "jt-");
typed_id!(
    /// An access key: a project's credential for SigV4-signed requests.
    AccessKeyId,
    "ak-"
);
typed_id!(JobId, "job-");
typed_id!(WorkloadId, "wl-");
typed_id!(
    /// One workload replica on one node.
    AllocId,
    "al-"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = NodeId::from_random([0xab; 10]);
        assert_eq!(id.as_str(), "nd-abababababababababab");
        assert_eq!(NodeId::parse(id.as_str()).unwrap(), id);
        assert!(NodeId::parse("nd-xyz").is_err());
        assert!(NodeId::parse("prj-abababababababababab").is_err());
        assert!(NodeId::parse("nd-ABABABABABABABABABAB").is_err());
        assert!(NodeId::parse("").is_err());
    }
}
