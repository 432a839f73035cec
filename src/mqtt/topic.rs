//! Topic names and topic filters (MQTT 5.0 section 4.7; MQTT 3.1.1 section 4.7): which are
//! valid, and which names a filter matches.

/// Why a topic name (of a PUBLISH) is not valid (MQTT 5.0 section 4.7.3): it is empty, holds a
/// wildcard (`+`, `#`) or U+0000.
pub fn check_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("the topic name is empty");
    }
    if topic.contains(['+', '#']) {
        return Err("a topic name may not hold the wildcards + or #");
    }
    if topic.contains('\0') {
        return Err("a topic name may not hold U+0000");
    }
    Ok(())
}

/// Why a topic filter (of a SUBSCRIBE or UNSUBSCRIBE) is not valid (MQTT 5.0 sections 4.7.1 and
/// 4.7.3): it is empty, holds U+0000, `#` is not alone in the last level, or `+` is not alone in
/// its level.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("the topic filter is empty");
    }
    if filter.contains('\0') {
        return Err("a topic filter may not hold U+0000");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("# must be the whole last level of a topic filter");
        }
        if level.contains('+') && level != "+" {
            return Err("+ must be a whole level of a topic filter");
        }
    }
    Ok(())
}

/// Whether `filter` (valid, see [`check_filter`]) matches the topic name `topic`. `+` matches one
/// level, `#` that level's parent and any number of levels below it; a filter that starts with
/// a wildcard does not match a name that starts with `$` (MQTT 5.0 section 4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = topic.split('/');
    let mut filters = filter.split('/');
    loop {
        match (filters.next(), names.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_examples_match() {
        // MQTT 5.0 section 4.7.1.2 and 4.7.1.3.
        for (filter, topic) in [
            ("sport/tennis/player1/#", "sport/tennis/player1"),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking"),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
            ),
            ("sport/#", "sport"),
            ("#", "sport/tennis"),
            ("sport/tennis/+", "sport/tennis/player1"),
            ("sport/+", "sport/"),
            ("+/+", "/finance"),
            ("/+", "/finance"),
            ("+", "finance"),
            ("$SYS/#", "$SYS/broker"),
            (
                "$hw/events/device/+/twin/update",
                "$hw/events/device/d1/twin/update",
            ),
            ("a//b", "a//b"),
        ] {
            assert!(matches(filter, topic), "{filter} should match {topic}");
        }
        for (filter, topic) in [
            ("sport/tennis/+", "sport/tennis/player1/ranking"),
            ("sport/+", "sport"),
            ("+", "/finance"),
            ("#", "$SYS/broker"),
            ("+/monitor/Clients", "$SYS/monitor/Clients"),
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
            ("A", "a"),
        ] {
            assert!(!matches(filter, topic), "{filter} should not match {topic}");
        }
    }

    #[test]
    fn filters_and_names_are_checked() {
        for good in ["#", "+", "a/+/b", "a/#", "/", "+/+", "$hw/#", "a b/ü"] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        for bad in ["", "a/#/b", "a#", "a/b#", "a+", "+a/b", "a/\0"] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_name("a/b c/$x"), Ok(()));
        for bad in ["", "a/+", "#", "a\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
