fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pm.proto");
    // Maps as BTreeMaps: values encode the same way every time, so a write that changes
    // nothing compares equal to what is stored.
    prost_build::Config::new()
        .btree_map(["."])
        .compile_protos(&["proto/pm.proto"], &["proto/"])?;
    Ok(())
}
