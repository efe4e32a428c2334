//! Unguessable tokens (session resume tokens, CSP nonces) from the operating
//! system's random generator.

/// 128 random bits as 32 lowercase hex digits.
pub fn token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .expect("BUG: the operating system's random generator works on every supported system");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_hex_and_differ() {
        let a = super::token();
        let b = super::token();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{a}");
        assert_ne!(a, b);
    }
}
