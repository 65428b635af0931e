//! Linux input events (`struct input_event` on x86_64) for the ACPI power button.

/// `sizeof(struct input_event)` on 64-bit: a 16-byte `timeval`, `u16` type, `u16` code, `i32`
/// value.
pub const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

/// The device name the ACPI button driver gives the power button.
pub const POWER_BUTTON_NAME: &str = "Power Button";

/// Whether a buffer of raw events holds a power-button press. Partial trailing events are ignored.
pub fn contains_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE).any(|ev| {
        let kind = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        v.extend(kind.to_ne_bytes());
        v.extend(code.to_ne_bytes());
        v.extend(value.to_ne_bytes());
        v
    }

    #[test]
    fn detects_press_not_release_or_sync() {
        let mut buf = event(0, 0, 0);
        buf.extend(event(EV_KEY, KEY_POWER, 0));
        assert!(!contains_power_press(&buf));
        buf.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(contains_power_press(&buf));
        assert!(!contains_power_press(&event(EV_KEY, 115, 1)));
        assert!(!contains_power_press(&event(EV_KEY, KEY_POWER, 1)[..23]));
    }
}
