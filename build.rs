//! Build script. Without the `cuda` or `candle-cuda` feature it does nothing. With either, it
//! compiles `kernels/*.cu` with nvcc, links the CUDA runtime and generates the Rust bindings of
//! `kernels/sigsoftmax.h`. It also sets the cfg `cuda_kernels`, which gates the `cuda` module
//! and everything built on it.
//!
//! Environment variables read with `--features cuda` or `candle-cuda`:
//! - `NVCC`: path of nvcc; otherwise `CUDA_HOME/bin/nvcc`, `CUDA_PATH/bin/nvcc`, then `PATH`.
//! - `SIGSOFTMAX_CUDA_ARCHS`: semicolon-separated compute capabilities, default `80;86;89;90`.
//!   Each gets SASS, and the newest also PTX so that newer GPUs can JIT-compile it.
//! - `SIGSOFTMAX_CUDA_CCBIN` or `NVCC_CCBIN`: host compiler for nvcc. Default: `g++-11` for
//!   CUDA 11 when it is on `PATH` (CUDA 11.8 rejects gcc 12), else nvcc's own choice.
//! - `SIGSOFTMAX_CUDART`: `static` (default) or `shared` linking of the CUDA runtime.
//! - `SIGSOFTMAX_STATIC_STDCXX=1`: link libstdc++ statically (the static CUDA runtime needs it).
//! - `SIGSOFTMAX_PTXAS_VERBOSE=1`: print ptxas' register and spill report as cargo warnings.
//! - `SIGSOFTMAX_DENY_SPILLS=1`: fail the build when ptxas reports a register spill in an f32,
//!   f16 or bf16 kernel (f64 kernels are exempt, see `check_spills`).
//!
//! Bindings: bindgen runs at build time, so `--features cuda` needs libclang (Debian:
//! `libclang-dev`). The generated file is not committed: the header is small and libclang is
//! one package, while committed bindings would need a regeneration check of their own.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(cuda_kernels)");
    #[cfg(all(feature = "cuda", feature = "candle-cuda"))]
    println!(
        "cargo:warning=features `cuda` and `candle-cuda` are both on, so the CUDA 11.8 driver API \
         pin of `cuda` also applies to candle's cudarc; enable only `candle-cuda`, which builds \
         the `cuda` module too"
    );
    #[cfg(any(feature = "cuda", feature = "candle-cuda"))]
    {
        cuda::build();
        println!("cargo::rustc-cfg=cuda_kernels");
    }
}

#[cfg(any(feature = "cuda", feature = "candle-cuda"))]
mod cuda {
    use std::env;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const SOURCES: [&str; 4] = [
        "kernels/forward.cu",
        "kernels/backward.cu",
        "kernels/cross_entropy.cu",
        "kernels/status.cu",
    ];
    const HEADERS: [&str; 2] = ["kernels/sigsoftmax.h", "kernels/common.cuh"];
    const DEFAULT_ARCHS: &str = "80;86;89;90";

    pub fn build() {
        for path in SOURCES.iter().chain(HEADERS.iter()) {
            println!("cargo:rerun-if-changed={path}");
        }
        for var in [
            "NVCC",
            "CUDA_HOME",
            "CUDA_PATH",
            "PATH",
            "SIGSOFTMAX_CUDA_ARCHS",
            "SIGSOFTMAX_CUDA_CCBIN",
            "NVCC_CCBIN",
            "SIGSOFTMAX_CUDART",
            "SIGSOFTMAX_PTXAS_VERBOSE",
            "SIGSOFTMAX_DENY_SPILLS",
            "SIGSOFTMAX_STATIC_STDCXX",
        ] {
            println!("cargo:rerun-if-env-changed={var}");
        }

        let nvcc = find_nvcc();
        let version = nvcc_version(&nvcc);
        let root = toolkit_root(&nvcc);
        let include = find_include_dir(&root);
        compile_kernels(&nvcc, version);
        link_cudart(&root);
        generate_bindings(&include);
    }

    /// nvcc from `NVCC`, `CUDA_HOME`, `CUDA_PATH` or `PATH`, in that order.
    fn find_nvcc() -> PathBuf {
        if let Some(nvcc) = env::var_os("NVCC") {
            let nvcc = PathBuf::from(nvcc);
            if nvcc.is_file() {
                return nvcc;
            }
            fail(&format!(
                "NVCC is set to {}, which is not a file",
                nvcc.display()
            ));
        }
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(home) = env::var_os(var) {
                let nvcc = Path::new(&home).join("bin").join("nvcc");
                if nvcc.is_file() {
                    return nvcc;
                }
            }
        }
        if let Some(nvcc) = find_on_path("nvcc") {
            return nvcc;
        }
        fail(
            "nvcc was not found (looked at NVCC, CUDA_HOME/bin, CUDA_PATH/bin and PATH).\n\
             Install a CUDA toolkit (11.8 or newer) and set CUDA_HOME, or install NVIDIA's pinned \
             compiler wheels without root:\n    bash .ci/install-cuda.sh\n\
             which prints the NVCC=... line to export.",
        )
    }

    fn find_on_path(name: &str) -> Option<PathBuf> {
        let path = env::var_os("PATH")?;
        env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }

    /// `(major, minor)` from `nvcc --version` ("Cuda compilation tools, release 13.0, ...").
    fn nvcc_version(nvcc: &Path) -> (u32, u32) {
        let output = Command::new(nvcc)
            .arg("--version")
            .output()
            .unwrap_or_else(|error| {
                fail(&format!(
                    "failed to run {} --version: {error}",
                    nvcc.display()
                ))
            });
        let text = String::from_utf8_lossy(&output.stdout);
        let release = text
            .split("release ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| fail(&format!("unexpected `nvcc --version` output:\n{text}")));
        let mut parts = release
            .trim()
            .split('.')
            .map(|part| part.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if version < (11, 8) {
            fail(&format!(
                "nvcc {} is CUDA {release}; CUDA 11.8 or newer is required",
                nvcc.display()
            ));
        }
        version
    }

    /// Returns the folder above nvcc's `bin` (`/usr` for Debian's `/usr/bin/nvcc`).
    fn toolkit_root(nvcc: &Path) -> PathBuf {
        let nvcc = nvcc.canonicalize().unwrap_or_else(|_| nvcc.to_path_buf());
        nvcc.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/usr"))
    }

    fn find_include_dir(root: &Path) -> PathBuf {
        let candidates = [
            root.join("include"),
            root.join("targets/x86_64-linux/include"),
            "/usr/include".into(),
        ];
        candidates
            .into_iter()
            .find(|dir| dir.join("cuda_runtime_api.h").is_file())
            .unwrap_or_else(|| {
                fail(&format!(
                    "cuda_runtime_api.h was not found under {}; install the CUDA runtime headers \
                     (PyPI: nvidia-cuda-runtime, Debian: nvidia-cuda-dev)",
                    root.display()
                ))
            })
    }

    /// Folders that may hold `libcudart_static.a` / `libcudart.so`, for each toolkit layout:
    /// NVIDIA's installer (`lib64`), the PyPI wheels (`lib`) and Debian (multiarch folder).
    fn library_dirs(root: &Path) -> Vec<PathBuf> {
        [
            root.join("lib64"),
            root.join("lib"),
            root.join("targets/x86_64-linux/lib"),
            root.join("lib/x86_64-linux-gnu"),
            PathBuf::from("/usr/lib/x86_64-linux-gnu"),
        ]
        .into_iter()
        .filter(|dir| dir.is_dir())
        .collect()
    }

    fn compile_kernels(nvcc: &Path, version: (u32, u32)) {
        let archs = env::var("SIGSOFTMAX_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.into());
        let mut archs: Vec<u32> = archs
            .split(';')
            .filter(|arch| !arch.trim().is_empty())
            .map(|arch| {
                arch.trim()
                    .trim_start_matches("sm_")
                    .parse()
                    .unwrap_or_else(|_| {
                        fail(&format!(
                            "invalid SIGSOFTMAX_CUDA_ARCHS entry `{arch}`; use e.g. 80;86;89;90"
                        ))
                    })
            })
            .collect();
        archs.sort_unstable();
        archs.dedup();
        let newest = *archs
            .last()
            .unwrap_or_else(|| fail("SIGSOFTMAX_CUDA_ARCHS lists no architecture"));

        // cc takes nvcc from the NVCC variable (`Build::compiler` would set the host compiler).
        env::set_var("NVCC", nvcc);
        let mut build = cc::Build::new();
        build
            .cuda(true)
            // cc adds -G (no device optimization at all) in debug builds: keep debug off and
            // optimize in every profile, since these kernels are only useful fast.
            .debug(false)
            .opt_level(3)
            .flag("-std=c++17")
            .include("kernels")
            .files(SOURCES)
            .warnings(false);
        for arch in &archs {
            let code = if *arch == newest {
                format!("[sm_{arch},compute_{arch}]")
            } else {
                format!("sm_{arch}")
            };
            build
                .flag("-gencode")
                .flag(format!("arch=compute_{arch},code={code}"));
        }
        match host_compiler(version) {
            Some(ccbin) => {
                build.ccbin(false).flag(format!("-ccbin={ccbin}"));
            }
            None => {
                // cc would pass its own C++ compiler (`c++`) with -ccbin; let nvcc pick instead.
                build.ccbin(false);
            }
        }

        // The static CUDA runtime is C++ and needs libstdc++, linked dynamically by default.
        if env::var("SIGSOFTMAX_STATIC_STDCXX").is_ok_and(|value| value == "1") {
            build.cpp_link_stdlib(None);
            link_static_stdcxx();
        }
        let compiler = build.get_compiler();
        build.compile("sigsoftmax_kernels");
        ptxas_report(&compiler);
    }

    /// Links libstdc++.a from the host g++, for binaries that must run on machines with an older
    /// libstdc++ (scripts/gpu-check.sh).
    fn link_static_stdcxx() {
        let output = Command::new("g++")
            .arg("-print-file-name=libstdc++.a")
            .output()
            .unwrap_or_else(|error| {
                fail(&format!(
                    "SIGSOFTMAX_STATIC_STDCXX=1 needs g++ to find libstdc++.a: {error}"
                ))
            });
        let archive = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        match archive.parent().filter(|_| archive.is_file()) {
            Some(dir) => {
                println!("cargo:rustc-link-search=native={}", dir.display());
                println!("cargo:rustc-link-lib=static=stdc++");
            }
            None => fail(
                "SIGSOFTMAX_STATIC_STDCXX=1 but g++ has no libstdc++.a; install libstdc++-12-dev",
            ),
        }
    }

    /// `SIGSOFTMAX_CUDA_CCBIN`, `NVCC_CCBIN`, or `g++-11` for CUDA 11 when it exists.
    fn host_compiler(version: (u32, u32)) -> Option<String> {
        for var in ["SIGSOFTMAX_CUDA_CCBIN", "NVCC_CCBIN"] {
            if let Ok(ccbin) = env::var(var) {
                if !ccbin.is_empty() {
                    return Some(ccbin);
                }
            }
        }
        if version.0 < 12 {
            return find_on_path("g++-11").map(|path| path.display().to_string());
        }
        None
    }

    /// Compiles each source once more with `-Xptxas -v` when a report or a spill check is
    /// requested (cc does not expose the compiler's stderr), prints the report and enforces the
    /// spill check. This doubles the CUDA compile time, so it only runs on request.
    fn ptxas_report(compiler: &cc::Tool) {
        let verbose = env::var("SIGSOFTMAX_PTXAS_VERBOSE").is_ok_and(|value| value == "1");
        let deny_spills = env::var("SIGSOFTMAX_DENY_SPILLS").is_ok_and(|value| value == "1");
        if !verbose && !deny_spills {
            return;
        }
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let mut report = String::new();
        for source in SOURCES {
            let mut command = compiler.to_command();
            command
                .args(["-Xptxas", "-v", "-c", source, "-o"])
                .arg(out_dir.join("ptxas-check.o"));
            let output = command.output().unwrap_or_else(|error| {
                fail(&format!("failed to rerun nvcc on {source}: {error}"))
            });
            report.push_str(&String::from_utf8_lossy(&output.stderr));
        }
        if verbose {
            for line in report.lines().filter(|line| line.contains("ptxas info")) {
                println!("cargo:warning={line}");
            }
        }
        if deny_spills {
            check_spills(&report);
        }
    }

    /// Fails on any spill outside the f64 kernels. ptxas reports 8 to 16 bytes of spill in some
    /// f64 kernels around calls into f64 math slow paths. These are allowed because f64 serves
    /// as a reference precision, not for speed.
    fn check_spills(report: &str) {
        let mut kernel = String::new();
        let mut arch = String::new();
        let mut offenders = Vec::new();
        for line in report.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                kernel = rest.split('\'').next().unwrap_or_default().to_string();
                arch = rest
                    .split("for '")
                    .nth(1)
                    .unwrap_or_default()
                    .trim_end_matches('\'')
                    .to_string();
            } else if line.contains("bytes spill stores")
                && !line.contains(" 0 bytes spill stores, 0 bytes spill loads")
            {
                // Mangled template arguments start with `Id` for double: forward_cachedIdLi2E...
                let is_f64 = kernel.contains("IdL") || kernel.contains("IdEv");
                if !is_f64 {
                    offenders.push(format!(
                        "{kernel} ({arch}):{}",
                        line.trim_start_matches("ptxas info    :")
                    ));
                }
            }
        }
        if !offenders.is_empty() {
            fail(&format!(
                "SIGSOFTMAX_DENY_SPILLS=1 and ptxas reported register spills in:\n{}",
                offenders.join("\n")
            ));
        }
    }

    /// Links the CUDA runtime: statically by default (the binary then needs no CUDA library
    /// until it touches the GPU), or shared with `SIGSOFTMAX_CUDART=shared`.
    fn link_cudart(root: &Path) {
        let dirs = library_dirs(root);
        // Search the toolkit's own folders first, so that the linker does not pick another
        // toolkit's libcudart_static.a found elsewhere on the system.
        for dir in &dirs {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        let mode = env::var("SIGSOFTMAX_CUDART").unwrap_or_else(|_| "static".into());
        match mode.as_str() {
            "static" => {
                if !dirs
                    .iter()
                    .any(|dir| dir.join("libcudart_static.a").is_file())
                {
                    fail(&format!(
                        "libcudart_static.a was not found in {dirs:?}; install the CUDA runtime \
                         (PyPI: nvidia-cuda-runtime) or set SIGSOFTMAX_CUDART=shared"
                    ));
                }
                println!("cargo:rustc-link-lib=static=cudart_static");
                // The static runtime loads the driver with dlopen and uses threads and clocks.
                for lib in ["dl", "pthread", "rt"] {
                    println!("cargo:rustc-link-lib=dylib={lib}");
                }
            }
            "shared" => {
                if dirs.iter().any(|dir| dir.join("libcudart.so").exists()) {
                    println!("cargo:rustc-link-lib=dylib=cudart");
                } else if let Some(name) = versioned_cudart(&dirs) {
                    // The PyPI wheel ships only libcudart.so.<major>, without the unversioned
                    // development link.
                    println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
                } else {
                    fail(&format!("libcudart.so was not found in {dirs:?}"));
                }
            }
            other => fail(&format!(
                "invalid SIGSOFTMAX_CUDART `{other}`; use static or shared"
            )),
        }
    }

    fn versioned_cudart(dirs: &[PathBuf]) -> Option<String> {
        dirs.iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .flatten()
            .find_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.starts_with("libcudart.so.").then_some(name)
            })
    }

    fn generate_bindings(include: &Path) {
        let out =
            PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
        bindgen::Builder::default()
            .header("kernels/sigsoftmax.h")
            .clang_arg(format!("-I{}", include.display()))
            .allowlist_function("sigsoftmax_.*")
            .allowlist_type("sigsoftmax_.*")
            .derive_default(true)
            .layout_tests(true)
            .generate()
            .unwrap_or_else(|error| {
                fail(&format!(
                    "bindgen failed on kernels/sigsoftmax.h: {error}\n\
                     bindgen needs libclang (Debian: apt-get install libclang-dev)"
                ))
            })
            .write_to_file(&out)
            .unwrap_or_else(|error| fail(&format!("failed to write {}: {error}", out.display())));
    }

    fn fail(message: &str) -> ! {
        eprintln!("error: {message}");
        panic!("{message}");
    }
}
