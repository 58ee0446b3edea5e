fn main() -> std::process::ExitCode {
    drove::main()
}
