//! Writes the telephone numbering metadata of the regions rollcall reads
//! without a country code (Hong Kong) into `OUT_DIR`, taken from the
//! `phonenumber` crate this build links against.
//!
//! Why: the crate's full database checks the syntax of every pattern of every
//! region the first time a number is parsed, about 150 ms of a `rollcall plan`
//! that must finish in 100. A database of one region takes well under a
//! millisecond; numbers of other regions still go to the full database
//! (`domain::phone`). Nothing is copied into the repository: the data is the
//! dependency's own, rebuilt whenever the dependency changes, and the tests
//! hold the small database to the full one's answers.

use std::path::PathBuf;

use phonenumber::metadata::loader;
use phonenumber::metadata::{DATABASE, Descriptor, Format, Metadata};

/// Regions the small database holds.
const REGIONS: &[&str] = &["HK"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // `sqlx::migrate!` embeds the migrations at compile time, but on stable
    // Rust it cannot tell cargo to watch them: without this a new migration
    // is left out of an incremental build.
    println!("cargo::rerun-if-changed=migrations");
    let regions: Vec<loader::Metadata> = REGIONS
        .iter()
        .map(|id| {
            let meta = DATABASE
                .by_id(*id)
                .unwrap_or_else(|| panic!("phonenumber has no metadata for region {id}"));
            metadata(meta)
        })
        .collect();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let json = serde_json::to_vec(&regions).expect("metadata serialises");
    std::fs::write(out.join("phone_regions.json"), json).expect("OUT_DIR is writable");
}

/// The loader's form of one region: the inverse of `Database::from`.
fn metadata(m: &Metadata) -> loader::Metadata {
    let d = m.descriptors();
    let opt = |d: Option<&Descriptor>| d.map(descriptor);
    loader::Metadata {
        general: Some(descriptor(d.general())),
        fixed_line: opt(d.fixed_line()),
        mobile: opt(d.mobile()),
        toll_free: opt(d.toll_free()),
        premium_rate: opt(d.premium_rate()),
        shared_cost: opt(d.shared_cost()),
        personal_number: opt(d.personal_number()),
        voip: opt(d.voip()),
        pager: opt(d.pager()),
        uan: opt(d.uan()),
        emergency: opt(d.emergency()),
        voicemail: opt(d.voicemail()),
        short_code: opt(d.short_code()),
        standard_rate: opt(d.standard_rate()),
        carrier: opt(d.carrier()),
        no_international: opt(d.no_international()),
        id: Some(m.id().to_owned()),
        country_code: Some(m.country_code()),
        international_prefix: m.international_prefix().map(|r| r.as_str().to_owned()),
        preferred_international_prefix: m.preferred_international_prefix().map(str::to_owned),
        national_prefix: m.national_prefix().map(str::to_owned),
        preferred_extension_prefix: m.preferred_extension_prefix().map(str::to_owned),
        national_prefix_for_parsing: m
            .national_prefix_for_parsing()
            .map(|r| r.as_str().to_owned()),
        national_prefix_transform_rule: m.national_prefix_transform_rule().map(str::to_owned),
        formats: m.formats().iter().map(format).collect(),
        international_formats: m.international_formats().iter().map(format).collect(),
        main_country_for_code: m.is_main_country_for_code(),
        leading_digits: m.leading_digits().map(|r| r.as_str().to_owned()),
        mobile_number_portable: m.is_mobile_number_portable(),
        defaults: Default::default(),
    }
}

fn descriptor(d: &Descriptor) -> loader::Descriptor {
    loader::Descriptor {
        national_number: Some(d.national_number().as_str().to_owned()),
        possible_length: d.possible_length().to_vec(),
        possible_local_length: d.possible_local_length().to_vec(),
        example: d.example().map(str::to_owned),
    }
}

fn format(f: &Format) -> loader::Format {
    loader::Format {
        pattern: Some(f.pattern().as_str().to_owned()),
        format: Some(f.format().to_owned()),
        leading_digits: f
            .leading_digits()
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        national_prefix_formatting_rule: f.national_prefix().map(str::to_owned),
        national_prefix_optional_when_formatting: f.is_national_prefix_optional(),
        domestic_carrier: f.domestic_carrier().map(str::to_owned),
    }
}
