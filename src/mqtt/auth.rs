//! User names and passwords for MQTT clients, from a file in the format of Mosquitto's
//! `mosquitto_passwd` (so that tool makes and changes it): one `user:hash` line per user, the
//! hash `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512, Mosquitto 2.0's default) or `$6$SALT$HASH`
//! (SHA-512 of the password then the salt, Mosquitto 1.x), salt and hash in base64.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

enum Hash {
    Pbkdf2 {
        iterations: std::num::NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The users of a password file.
pub struct Passwords {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passwords({} users, MASKED)", self.users.len())
    }
}

impl Passwords {
    /// Reads `file`.
    ///
    /// Errors: the file cannot be read, or a line is not `user:$7$…` or `user:$6$…` (the line
    /// number says which).
    pub fn load(file: &Path) -> Result<Passwords, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the password file {}: {e}", file.display()))?;
        Passwords::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Reads the text of a password file.
    pub fn parse(text: &str) -> Result<Passwords, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", n + 1);
            let (user, hash) = line.split_once(':').ok_or_else(|| bad("not user:hash"))?;
            let b64 = |s: &str| {
                STANDARD
                    .decode(s)
                    .map_err(|_| bad("salt or hash is not base64"))
            };
            let parts: Vec<&str> = hash.split('$').collect();
            let hash = match parts.as_slice() {
                ["", "7", iterations, salt, hash] => Hash::Pbkdf2 {
                    iterations: iterations
                        .parse()
                        .map_err(|_| bad("the iteration count is not a positive number"))?,
                    salt: b64(salt)?,
                    hash: b64(hash)?,
                },
                ["", "6", salt, hash] => Hash::Sha512 {
                    salt: b64(salt)?,
                    hash: b64(hash)?,
                },
                _ => {
                    return Err(bad(
                        "the hash is neither $7$ (PBKDF2-SHA512) nor $6$ (SHA-512)",
                    ));
                }
            };
            users.insert(user.to_owned(), hash);
        }
        Ok(Passwords { users })
    }

    /// Whether `user` is in the file with `password`.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            }) => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            Some(Hash::Sha512 { salt, hash }) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                let digest = ctx.finish();
                // Compared in constant time, like ring's PBKDF2 verification.
                digest.as_ref().len() == hash.len()
                    && digest
                        .as_ref()
                        .iter()
                        .zip(hash)
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pbkdf2_line(user: &str, password: &str) -> String {
        let salt = b"0123456789abcdef";
        let mut hash = [0u8; 64];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA512,
            std::num::NonZeroU32::new(101).unwrap(),
            salt,
            password.as_bytes(),
            &mut hash,
        );
        format!(
            "{user}:$7$101${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(hash)
        )
    }

    #[test]
    fn mosquitto_password_lines_are_checked() {
        let text = format!("# users\n{}\n\n", pbkdf2_line("dev-1", "s3cret"));
        let p = Passwords::parse(&text).unwrap();
        assert!(p.check("dev-1", b"s3cret"));
        assert!(!p.check("dev-1", b"s3cre"));
        assert!(!p.check("dev-2", b"s3cret"));
        assert!(
            Passwords::parse("dev:plain")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(Passwords::parse("a:$7$x$AA==$AA==").is_err());
    }
}
