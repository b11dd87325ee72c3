//! The boot configuration data store (BCD), itself a hive (`docs/guest-registry.md` §10):
//! `Objects\{GUID}\Elements\<type in hex>\Element`. Resolves `{bootmgr}`'s default object
//! and reads the elements the Windows checks need, following inheritance
//! (`BcdLibraryObjectList_InheritedObjects`) so each setting says which object it came from.

use std::collections::HashSet;

use super::value::{Value, ValueType};
use super::{Hive, Key};
use crate::error::{Error, ErrorKind, Result};

/// The error code of a hive that is not a BCD store, or a BCD element of the wrong shape.
pub const CODE_BCD: &str = "guest.registry.bcd";

/// `{bootmgr}`, the Windows Boot Manager object.
pub const BOOTMGR: &str = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
/// `{emssettings}`, inherited by the boot manager and loaders.
pub const EMSSETTINGS: &str = "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}";

/// Element types (`docs/guest-registry.md` §10.3): class in bits 28–31, format in 24–27.
pub mod element {
    /// `BcdLibraryObjectList_InheritedObjects`: objects whose elements this one inherits.
    pub const INHERITED_OBJECTS: u32 = 0x1400_0006;
    /// `BcdLibraryBoolean_AutoRecoveryEnabled` (`recoveryenabled`).
    pub const AUTO_RECOVERY_ENABLED: u32 = 0x1600_0009;
    /// `BcdLibraryBoolean_EmsEnabled` (`bootems`, set on `{bootmgr}`).
    pub const LIBRARY_EMS_ENABLED: u32 = 0x1600_0020;
    /// `BcdLibraryInteger_EmsPort`.
    pub const EMS_PORT: u32 = 0x1500_0022;
    /// `BcdLibraryInteger_EmsBaudRate`.
    pub const EMS_BAUD_RATE: u32 = 0x1500_0023;
    /// `BcdBootMgrObject_DefaultObject` (`{default}`).
    pub const DEFAULT_OBJECT: u32 = 0x2300_0003;
    /// `BcdBootMgrInteger_Timeout`.
    pub const TIMEOUT: u32 = 0x2500_0004;
    /// `BcdBootMgrBoolean_DisplayBootMenu`.
    pub const DISPLAY_BOOT_MENU: u32 = 0x2600_0020;
    /// `BcdOSLoaderInteger_BootStatusPolicy` (`bootstatuspolicy`).
    pub const BOOT_STATUS_POLICY: u32 = 0x2500_00E0;
    /// `BcdOSLoaderBoolean_EmsEnabled` (`ems` on the loader).
    pub const LOADER_EMS_ENABLED: u32 = 0x2600_00B0;
}

/// Objects followed through inheritance at most (real stores chain three or four).
const MAX_INHERITANCE: usize = 32;

fn bcd_error(message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        CODE_BCD,
        format!("BCD store: {message}"),
    )
}

/// A setting and the object (GUID) it was found on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// The object that holds the element (the one asked about, or one it inherits from).
    pub from: String,
}

/// The boot settings the Windows checks look at. `None` means the element is set nowhere,
/// so the firmware's default applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// The `{default}` loader, as `{guid}`.
    pub default_loader: Option<String>,
    /// `bootstatuspolicy` of the default loader (0 `DisplayAllFailures`, 1 `IgnoreAllFailures`,
    /// 2 `IgnoreShutdownFailures`, 3 `IgnoreBootFailures`).
    pub boot_status_policy: Option<Setting<u64>>,
    /// `recoveryenabled` of the default loader.
    pub recovery_enabled: Option<Setting<bool>>,
    /// `ems` of the default loader.
    pub loader_ems: Option<Setting<bool>>,
    /// `bootems` of `{bootmgr}`.
    pub boot_manager_ems: Option<Setting<bool>>,
    /// `displaybootmenu` of `{bootmgr}`.
    pub display_boot_menu: Option<Setting<bool>>,
    /// `timeout` of `{bootmgr}`, seconds.
    pub timeout: Option<Setting<u64>>,
    /// EMS port, as the default loader sees it (usually from `{emssettings}`).
    pub ems_port: Option<Setting<u64>>,
    /// EMS baud rate, as the default loader sees it.
    pub ems_baud_rate: Option<Setting<u64>>,
}

/// A BCD store opened over a hive.
#[derive(Debug)]
pub struct Bcd<'h> {
    objects: Key<'h>,
}

impl<'h> Bcd<'h> {
    /// Check that `hive` is a BCD store (it has an `Objects` key).
    pub fn new(hive: &'h Hive) -> Result<Bcd<'h>> {
        let Some(objects) = hive.key("Objects")? else {
            return Err(bcd_error(
                "the hive has no `Objects` key; it is not a boot configuration store",
            ));
        };
        Ok(Bcd { objects })
    }

    /// The object key `{guid}` (braces optional, any case).
    pub fn object(&self, guid: &str) -> Result<Option<Key<'h>>> {
        let guid = guid.trim_start_matches('{').trim_end_matches('}');
        self.objects.subkey(&format!("{{{guid}}}"))
    }

    /// The `Description\Type` of an object (`0x10100002` boot manager, `0x10200003` loader).
    pub fn object_type(&self, guid: &str) -> Result<Option<u32>> {
        let Some(obj) = self.object(guid)? else {
            return Ok(None);
        };
        match obj.subkey("Description")? {
            Some(d) => Ok(d.value("Type")?.and_then(|v| v.as_dword())),
            None => Ok(None),
        }
    }

    /// The element `element_type` set on the object itself (not inherited). Element key
    /// names are compared as numbers, since their hex case varies.
    pub fn element(&self, guid: &str, element_type: u32) -> Result<Option<Value>> {
        let Some(obj) = self.object(guid)? else {
            return Ok(None);
        };
        let Some(elements) = obj.subkey("Elements")? else {
            return Ok(None);
        };
        for e in elements.subkeys()? {
            if u32::from_str_radix(e.name(), 16).ok() == Some(element_type) {
                return e.value("Element");
            }
        }
        Ok(None)
    }

    /// The element as the object sees it: its own, else the first found depth-first
    /// through its inherited objects (each object visited once; at most 32).
    pub fn effective(&self, guid: &str, element_type: u32) -> Result<Option<(String, Value)>> {
        let mut seen = HashSet::new();
        self.effective_from(guid, element_type, &mut seen)
    }

    fn effective_from(
        &self,
        guid: &str,
        element_type: u32,
        seen: &mut HashSet<String>,
    ) -> Result<Option<(String, Value)>> {
        let norm = guid
            .trim_matches(|c| c == '{' || c == '}')
            .to_ascii_lowercase();
        if !seen.insert(norm.clone()) {
            return Ok(None); // inherited twice or in a loop: its elements were already looked at
        }
        if seen.len() > MAX_INHERITANCE {
            return Err(bcd_error(format!(
                "object {guid} inherits through more than {MAX_INHERITANCE} objects"
            )));
        }
        if let Some(v) = self.element(guid, element_type)? {
            return Ok(Some((format!("{{{norm}}}"), v)));
        }
        let Some(list) = self.element(guid, element::INHERITED_OBJECTS)? else {
            return Ok(None);
        };
        for parent in object_list(&list)? {
            if let Some(found) = self.effective_from(&parent, element_type, seen)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// `{bootmgr}`'s default object (`{default}`), as `{guid}` in lower case.
    pub fn default_loader(&self) -> Result<Option<String>> {
        match self.element(BOOTMGR, element::DEFAULT_OBJECT)? {
            Some(v) => object_id(&v).map(Some),
            None => Ok(None),
        }
    }

    /// The settings the Windows checks read.
    pub fn boot_settings(&self) -> Result<BootSettings> {
        let default_loader = self.default_loader()?;
        let int = |guid: Option<&str>, t| -> Result<Option<Setting<u64>>> {
            let Some(guid) = guid else { return Ok(None) };
            self.effective(guid, t)?
                .map(|(from, v)| integer(&v).map(|value| Setting { value, from }))
                .transpose()
        };
        let boolean = |guid: Option<&str>, t| -> Result<Option<Setting<bool>>> {
            let Some(guid) = guid else { return Ok(None) };
            self.effective(guid, t)?
                .map(|(from, v)| {
                    integer(&v).map(|n| Setting {
                        value: n != 0,
                        from,
                    })
                })
                .transpose()
        };
        let loader = default_loader.as_deref();
        Ok(BootSettings {
            boot_status_policy: int(loader, element::BOOT_STATUS_POLICY)?,
            recovery_enabled: boolean(loader, element::AUTO_RECOVERY_ENABLED)?,
            loader_ems: boolean(loader, element::LOADER_EMS_ENABLED)?,
            boot_manager_ems: boolean(Some(BOOTMGR), element::LIBRARY_EMS_ENABLED)?,
            display_boot_menu: boolean(Some(BOOTMGR), element::DISPLAY_BOOT_MENU)?,
            timeout: int(Some(BOOTMGR), element::TIMEOUT)?,
            ems_port: int(loader, element::EMS_PORT)?,
            ems_baud_rate: int(loader, element::EMS_BAUD_RATE)?,
            default_loader,
        })
    }
}

/// An integer or boolean element: `REG_BINARY` of at most 8 bytes, little-endian,
/// zero-extended (integers are stored in 8 bytes, booleans in 1).
pub fn integer(v: &Value) -> Result<u64> {
    let d = v.raw();
    if v.value_type() != ValueType::BINARY || d.is_empty() || d.len() > 8 {
        return Err(bcd_error(format!(
            "an integer or boolean element is {} of {} bytes; expected REG_BINARY of 1 to 8 bytes",
            v.value_type(),
            d.len()
        )));
    }
    let mut b = [0u8; 8];
    b[..d.len()].copy_from_slice(d);
    Ok(u64::from_le_bytes(b))
}

/// An object element: `REG_SZ` `{guid}`, returned in lower case.
pub fn object_id(v: &Value) -> Result<String> {
    match v.as_string() {
        Some(s) if is_guid(&s) => Ok(s.to_ascii_lowercase()),
        _ => Err(bcd_error(format!(
            "an object element is {} `{}`; expected REG_SZ holding a {{GUID}}",
            v.value_type(),
            String::from_utf8_lossy(v.raw()).escape_debug()
        ))),
    }
}

/// An object-list element: `REG_MULTI_SZ` of `{guid}`s.
pub fn object_list(v: &Value) -> Result<Vec<String>> {
    match v.data() {
        super::ValueData::MultiString(list) if list.iter().all(|s| is_guid(s)) => {
            Ok(list.into_iter().map(|s| s.to_ascii_lowercase()).collect())
        }
        _ => Err(bcd_error(format!(
            "an object-list element is {}; expected REG_MULTI_SZ of {{GUID}}s",
            v.value_type()
        ))),
    }
}

/// `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}`.
fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 38
        && b[0] == b'{'
        && b[37] == b'}'
        && b[1..37].iter().enumerate().all(|(i, &c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}
