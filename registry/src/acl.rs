//! Access control: bearer tokens and the policies they carry.
//!
//! A registry is a control plane: whoever can write to it can redirect
//! traffic. With ACLs on, every API call but the operational endpoints needs a
//! token. Policies:
//!
//! - `read`: queries, watches, blocking queries;
//! - `write:PATTERN`: register, deregister, heartbeat and report checks of the
//!   services whose names match `PATTERN` (`*` matches any run of characters);
//!   a writer may also read;
//! - `admin`: everything, including snapshots and maintenance;
//! - `dc:PATTERN`: the token's other rights also hold in the federated
//!   datacenters whose names match `PATTERN` (`?dc=`); without it a token
//!   reads and writes its own datacenter only. The remote datacenter checks
//!   the same token again against its own list.
//!
//! An `[anonymous]` table gives calls without any token a policy of their own
//! (Consul's anonymous token), typically `read` so that health indicators and
//! dashboards work; without it they are refused. It cannot be `admin`.
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time; they
//! never reach a log.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

/// One permission a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read the catalog.
    Read,
    /// Change instances of this service.
    Write(String),
    /// Change instances of some service; the handler checks which.
    AnyWrite,
    /// Administer the registry.
    Admin,
}

/// A service-name pattern of a `write:` policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Whether `service` (lowercase) matches.
    ///
    /// ```
    /// use roster_registry::acl::Pattern;
    /// let p = Pattern::new("web-*");
    /// assert!(p.matches("web-api") && p.matches("web-"));
    /// assert!(!p.matches("db"));
    /// assert!(Pattern::new("*-internal").matches("billing-internal"));
    /// ```
    pub fn new(raw: &str) -> Pattern {
        Pattern(raw.to_ascii_lowercase())
    }

    /// Glob match with `*` as the only wildcard.
    pub fn matches(&self, service: &str) -> bool {
        glob(self.0.as_bytes(), service.as_bytes())
    }
}

/// Glob match in O(pattern × text) time at worst, without recursion: on a
/// mismatch only the most recent `*` is widened by one character (an earlier
/// star never needs to be revisited, since the later one can absorb anything it
/// could). A recursive matcher backtracks over every star and took seconds on
/// `*-*-*x` against a long name.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was in the pattern, and where in the text its match ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// What a token may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, for logs and errors (never the secret).
    pub name: String,
    /// May read.
    pub read: bool,
    /// May administer (implies everything).
    pub admin: bool,
    /// Services it may write.
    pub write: Vec<Pattern>,
    /// Other datacenters it may call with `?dc=` (an admin may call any).
    pub datacenters: Vec<Pattern>,
}

impl Principal {
    /// Everything allowed: ACLs off.
    pub fn root() -> Principal {
        Principal {
            name: "anonymous (ACLs off)".into(),
            read: true,
            admin: true,
            write: Vec::new(),
            datacenters: Vec::new(),
        }
    }

    /// Whether this principal may cross into datacenter `dc` with `?dc=`.
    pub fn allows_datacenter(&self, dc: &str) -> bool {
        self.admin
            || self
                .datacenters
                .iter()
                .any(|p| p.matches(&dc.to_ascii_lowercase()))
    }

    /// Whether this principal has `need`.
    pub fn allows(&self, need: &Need) -> bool {
        if self.admin {
            return true;
        }
        match need {
            Need::Read => self.read || !self.write.is_empty(),
            Need::Write(service) => self.write.iter().any(|p| p.matches(service)),
            Need::AnyWrite => !self.write.is_empty(),
            Need::Admin => false,
        }
    }
}

/// One token as configured.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    secret: String,
    policies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    anonymous: Option<AnonymousEntry>,
}

/// The rights of calls that carry no token (Consul's anonymous token).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnonymousEntry {
    policies: Vec<String>,
}

/// The configured tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<([u8; 32], Arc<Principal>)>,
    /// What a call without a token may do; `None` (the default): nothing.
    anonymous: Option<Arc<Principal>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: digests of secrets stay out of debug output too.
        f.debug_list()
            .entries(self.entries.iter().map(|(_, p)| &p.name))
            .finish()
    }
}

/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// Not TOML, or not the shape of a token file (an unknown key, a missing one).
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// A secret is too short to be one.
    #[error("token {name:?}: secrets must be at least {MIN_SECRET_LEN} characters")]
    ShortSecret {
        /// The token's name.
        name: String,
    },
    /// A secret holds a space or a control character (a copy-paste accident).
    #[error("token {name:?}: secrets cannot hold spaces or control characters")]
    SecretCharacters {
        /// The token's name.
        name: String,
    },
    /// Two tokens share a secret, so a call could not tell which it is.
    #[error("token {name:?}: the same secret is configured twice")]
    DuplicateSecret {
        /// The name of the second token with it.
        name: String,
    },
    /// A policy is none of `read`, `write:PATTERN`, `admin`.
    #[error(
        "token {name:?}: unknown policy {policy:?} (use read, write:PATTERN, dc:PATTERN or admin)"
    )]
    UnknownPolicy {
        /// The token's name (`anonymous` for the anonymous policies).
        name: String,
        /// The policy.
        policy: String,
    },
    /// The anonymous policies include `admin`.
    #[error("anonymous: the admin policy cannot be given to calls without a token")]
    AnonymousAdmin,
}

impl Tokens {
    /// Parses the TOML token list:
    ///
    /// ```toml
    /// [[tokens]]
    /// name = "deployer"
    /// secret = "a long random string"
    /// policies = ["read", "write:web-*"]
    /// ```
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let file: TokenFile = toml::from_str(text)?;
        let mut tokens = Tokens::default();
        for entry in file.tokens {
            let name = entry.name;
            if entry.secret.len() < MIN_SECRET_LEN {
                return Err(TokensError::ShortSecret { name });
            }
            if entry
                .secret
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(TokensError::SecretCharacters { name });
            }
            let principal = principal_of(&name, &entry.policies)?;
            let digest = digest(&entry.secret);
            if tokens.entries.iter().any(|(d, _)| *d == digest) {
                return Err(TokensError::DuplicateSecret { name });
            }
            tokens.entries.push((digest, Arc::new(principal)));
        }
        if let Some(anon) = file.anonymous {
            if anon.policies.iter().any(|p| p == "admin") {
                return Err(TokensError::AnonymousAdmin);
            }
            tokens.anonymous = Some(Arc::new(principal_of("anonymous", &anon.policies)?));
        }
        Ok(tokens)
    }

    /// What calls without a token may do, when the file gives them anything.
    pub fn anonymous(&self) -> Option<Arc<Principal>> {
        self.anonymous.clone()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of `secret`. Every entry is compared, each in constant
    /// time, so the time taken says nothing about which or how much matched.
    pub fn lookup(&self, secret: &str) -> Option<Arc<Principal>> {
        let wanted = digest(secret);
        let mut found = None;
        for (d, principal) in &self.entries {
            if constant_time_eq(d, &wanted) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// A principal named `name` with `policies`.
fn principal_of(name: &str, policies: &[String]) -> Result<Principal, TokensError> {
    let mut principal = Principal {
        name: name.to_owned(),
        ..Principal::default()
    };
    for policy in policies {
        match policy.split_once(':') {
            None if policy == "read" => principal.read = true,
            None if policy == "admin" => principal.admin = true,
            Some(("write", pattern)) if !pattern.is_empty() => {
                principal.write.push(Pattern::new(pattern));
            }
            Some(("dc", pattern)) if !pattern.is_empty() => {
                principal.datacenters.push(Pattern::new(pattern));
            }
            _ => {
                return Err(TokensError::UnknownPolicy {
                    name: name.to_owned(),
                    policy: policy.clone(),
                });
            }
        }
    }
    Ok(principal)
}

fn digest(secret: &str) -> [u8; 32] {
    digest_bytes(secret.as_bytes())
}

fn digest_bytes(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Compares two secrets in time that depends on neither (both are hashed
/// first, so their lengths do not show either).
pub fn secrets_equal(given: &[u8], expected: &[u8]) -> bool {
    constant_time_eq(&digest_bytes(given), &digest_bytes(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[tokens]]
        name = "reader"
        secret = "rrrrrrrrrrrrrrrrrrrr"
        policies = ["read"]

        [[tokens]]
        name = "web-writer"
        secret = "wwwwwwwwwwwwwwwwwwww"
        policies = ["write:web*"]

        [[tokens]]
        name = "ops"
        secret = "aaaaaaaaaaaaaaaaaaaa"
        policies = ["admin"]
    "#;

    #[test]
    fn policies_allow_what_they_say() {
        let tokens = Tokens::parse(FILE).unwrap();
        let reader = tokens.lookup("rrrrrrrrrrrrrrrrrrrr").unwrap();
        let writer = tokens.lookup("wwwwwwwwwwwwwwwwwwww").unwrap();
        let ops = tokens.lookup("aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert!(tokens.lookup("nope-nope-nope-nope").is_none());
        let web = Need::Write("web-api".into());
        let db = Need::Write("db".into());
        assert!(
            reader.allows(&Need::Read) && !reader.allows(&web) && !reader.allows(&Need::AnyWrite)
        );
        assert!(writer.allows(&web) && !writer.allows(&db) && writer.allows(&Need::Read));
        assert!(!writer.allows(&Need::Admin) && !reader.allows(&Need::Admin));
        assert!(
            [Need::Read, web, db, Need::Admin]
                .iter()
                .all(|n| ops.allows(n))
        );
        assert_eq!(format!("{tokens:?}"), r#"["reader", "web-writer", "ops"]"#);
    }

    #[test]
    fn globs_match_like_the_recursive_definition() {
        fn slow(pattern: &[u8], text: &[u8]) -> bool {
            match pattern.split_first() {
                None => text.is_empty(),
                Some((b'*', rest)) => (0..=text.len()).any(|skip| slow(rest, &text[skip..])),
                Some((c, rest)) => text.first() == Some(c) && slow(rest, &text[1..]),
            }
        }
        let alphabet = [b'a', b'b', b'-', b'*'];
        // Every pattern and text of up to 5 symbols over a small alphabet.
        let all = |max: usize, stars: bool| {
            let mut out: Vec<Vec<u8>> = vec![Vec::new()];
            let mut frontier = out.clone();
            for _ in 0..max {
                let mut next = Vec::new();
                for s in &frontier {
                    for c in alphabet.iter().filter(|c| stars || **c != b'*') {
                        let mut s = s.clone();
                        s.push(*c);
                        next.push(s);
                    }
                }
                out.extend(next.iter().cloned());
                frontier = next;
            }
            out
        };
        for pattern in all(4, true) {
            for text in all(5, false) {
                assert_eq!(
                    glob(&pattern, &text),
                    slow(&pattern, &text),
                    "{:?} against {:?}",
                    String::from_utf8_lossy(&pattern),
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }

    #[test]
    fn globs_take_linear_time_on_hostile_input() {
        // The recursive matcher needs about n^4 steps here and would not
        // finish; this one walks the text once per star.
        let text = "-".repeat(64 * 1024);
        assert!(!Pattern::new("*-*-*-*-*x").matches(&text));
        assert!(Pattern::new("*-*-*-*-*-").matches(&text));
    }

    #[test]
    fn an_anonymous_policy_is_optional_and_never_admin() {
        assert!(Tokens::parse(FILE).unwrap().anonymous().is_none());
        let with = format!("{FILE}\n[anonymous]\npolicies = [\"read\"]\n");
        let anon = Tokens::parse(&with).unwrap().anonymous().unwrap();
        assert!(anon.allows(&Need::Read) && !anon.allows(&Need::AnyWrite));
        let admin = format!("{FILE}\n[anonymous]\npolicies = [\"admin\"]\n");
        let err = Tokens::parse(&admin).unwrap_err();
        assert!(matches!(err, TokensError::AnonymousAdmin), "{err:?}");
        assert!(err.to_string().contains("admin"), "{err}");
        let bad = format!("{FILE}\n[anonymous]\npolicies = [\"everything\"]\n");
        let err = Tokens::parse(&bad).unwrap_err();
        assert!(
            matches!(&err, TokensError::UnknownPolicy { name, policy } if name == "anonymous" && policy == "everything"),
            "{err:?}"
        );
        assert!(err.to_string().contains("unknown policy"), "{err}");
    }

    #[test]
    fn bad_token_files_are_refused() {
        for (file, needle) in [
            (
                r#"[[tokens]]
                name = "x"
                secret = "short"
                policies = ["read"]"#,
                "at least",
            ),
            (
                r#"[[tokens]]
                name = "x"
                secret = "xxxxxxxxxxxxxxxxxxxx"
                policies = ["delete"]"#,
                "unknown policy",
            ),
            (
                r#"[[tokens]]
                name = "x"
                secret = "xxxxxxxxxxxxxxxxxxxx"
                policies = ["write:"]"#,
                "unknown policy",
            ),
            (
                r#"[[tokens]]
                name = "x"
                secret = "xxxxxxxxxxxxxxxxxxxx"
                policies = []
                [[tokens]]
                name = "y"
                secret = "xxxxxxxxxxxxxxxxxxxx"
                policies = []"#,
                "twice",
            ),
            (
                r#"[[tokens]]
                name = "x"
                token = "xxxxxxxxxxxxxxxxxxxx""#,
                "unknown field",
            ),
        ] {
            let err = Tokens::parse(file).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
