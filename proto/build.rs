fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/pm.proto");
    prost_build::compile_protos(&["proto/pm.proto"], &["proto/"])?;
    Ok(())
}
