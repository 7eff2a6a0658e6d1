//! Tests of configuration loading and validation.

use super::*;

fn write(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "roster-cfg-{}-{}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults_without_anything() {
    assert_eq!(
        Config::load(&ServeArgs::default()).unwrap(),
        Config::default()
    );
}

#[test]
fn flags_override_the_file() {
    let path = write(
        "http_addr = \"127.0.0.1:9000\"\nmax_instances_per_service = 5\nderegister_critical_after = \"5m\"\n",
    );
    let args = ServeArgs {
        config: Some(path.clone()),
        http_addr: Some("0.0.0.0:8501".parse().unwrap()),
        ..Default::default()
    };
    let cfg = Config::load(&args).unwrap();
    assert_eq!(cfg.http_addr.port(), 8501);
    assert_eq!(cfg.catalog.max_instances_per_service, 5);
    assert_eq!(
        cfg.limits.default_deregister_critical_after,
        Duration::from_secs(300)
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn dns_defaults() {
    let cfg = Config::load(&ServeArgs::default()).unwrap();
    assert_eq!(cfg.dns_addr, Some("127.0.0.1:8600".parse().unwrap()));
    assert_eq!(cfg.dns.domain, "roster");
    assert_eq!(cfg.dns.ttl, 0);
    assert_eq!(cfg.dns, roster_dns::DnsConfig::default());
}

#[test]
fn dns_settings_from_the_file_and_flags() {
    let path =
        write("dns_addr = \"0.0.0.0:53\"\ndns_domain = \"consul.\"\ndns_ttl = 30\nno_dns = true\n");
    let file_only = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let cfg = Config::load(&file_only).unwrap();
    assert_eq!(cfg.dns_addr, None, "no_dns wins over dns_addr");
    assert_eq!(cfg.dns.domain, "consul.");
    assert_eq!(cfg.dns.ttl, 30);

    let flags = ServeArgs {
        no_dns: Some(false),
        dns_addr: Some("127.0.0.1:5353".parse().unwrap()),
        dns_domain: Some("svc.example".into()),
        dns_ttl: Some(5),
        ..file_only
    };
    let cfg = Config::load(&flags).unwrap();
    assert_eq!(cfg.dns_addr, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(cfg.dns.domain, "svc.example");
    assert_eq!(cfg.dns.ttl, 5);
    std::fs::remove_file(path).unwrap();

    let off = ServeArgs {
        no_dns: Some(true),
        ..Default::default()
    };
    assert_eq!(Config::load(&off).unwrap().dns_addr, None);
}

#[test]
fn dns_flags_parse() {
    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ServeArgs,
    }
    let parse = |argv: &[&str]| {
        <Cmd as clap::Parser>::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .map(|c| c.args)
    };
    let args = parse(&[
        "--no-dns",
        "--dns-addr",
        "[::1]:8653",
        "--dns-domain",
        "example",
        "--dns-ttl",
        "10",
    ])
    .unwrap();
    assert_eq!(args.no_dns, Some(true));
    assert_eq!(args.dns_addr, Some("[::1]:8653".parse().unwrap()));
    assert_eq!(args.dns_domain.as_deref(), Some("example"));
    assert_eq!(args.dns_ttl, Some(10));
    assert_eq!(parse(&["--no-dns=false"]).unwrap().no_dns, Some(false));
    assert_eq!(parse(&["--no-dns=no"]).unwrap().no_dns, Some(false));
    assert!(parse(&["--dns-ttl", "-1"]).is_err());
    assert!(parse(&["--dns-addr", "localhost"]).is_err());
}

#[test]
fn grpc_settings_from_flags_and_the_file() {
    let on = Config::load(&ServeArgs::default()).unwrap();
    assert_eq!(on.grpc_addr, Some(crate::xds::DEFAULT_GRPC_ADDR));
    let off = Config::load(&ServeArgs {
        no_grpc: Some(true),
        grpc_addr: Some("127.0.0.1:9000".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(off.grpc_addr, None, "--no-grpc wins over an address");
    let dir = std::env::temp_dir().join(format!("roster-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("roster.toml");
    std::fs::write(&file, "grpc_addr = \"0.0.0.0:9502\"\nmax_xds_streams = 7\n").unwrap();
    let from_file = Config::load(&ServeArgs {
        config: Some(file.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(from_file.grpc_addr, Some("0.0.0.0:9502".parse().unwrap()));
    assert_eq!(from_file.max_xds_streams, 7);
    std::fs::write(&file, "max_xds_streams = 0\n").unwrap();
    let err = Config::load(&ServeArgs {
        config: Some(file),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("max_xds_streams"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http2_settings_from_flags_and_the_file() {
    let on = Config::load(&ServeArgs::default()).unwrap();
    assert!(on.serve.http2);
    assert_eq!(on.serve.http2_max_streams, 256);
    let file = write("no_http2 = true\nhttp2_max_streams = 64\n");
    let from_file = Config::load(&ServeArgs {
        config: Some(file.clone()),
        ..Default::default()
    })
    .unwrap();
    assert!(!from_file.serve.http2);
    assert_eq!(from_file.serve.http2_max_streams, 64);
    // `--no-http2=false` turns it back on over the file.
    let flags = Config::load(&ServeArgs {
        config: Some(file.clone()),
        no_http2: Some(false),
        http2_max_streams: Some(1000),
        ..Default::default()
    })
    .unwrap();
    assert!(flags.serve.http2);
    assert_eq!(flags.serve.http2_max_streams, 1000);
    for bad in [0, 100_001] {
        let err = Config::load(&ServeArgs {
            http2_max_streams: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("http2_max_streams"), "{err}");
    }
    std::fs::remove_file(file).unwrap();
}

#[test]
fn bad_dns_settings_are_refused() {
    for domain in [".", "", "a..b", &"x".repeat(64)] {
        let err = Config::load(&ServeArgs {
            dns_domain: Some(domain.into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "dns_domain",
                    ..
                }
            ),
            "{domain:?}: {err}"
        );
        assert!(err.to_string().contains("invalid DNS domain"), "{err}");
    }
    let err = Config::load(&ServeArgs {
        dns_ttl: Some(u32::MAX),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("dns_ttl"), "{err}");
    let path = write("dns_ttl = -1\n");
    let err = Config::load(&ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let path = write("http_adr = \"127.0.0.1:9000\"\n");
    let err = Config::load(&ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("http_adr"), "{err}");
    std::fs::remove_file(path).unwrap();
    let err = Config::load(&ServeArgs {
        max_instances_per_service: Some(0),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("max_instances_per_service"),
        "{err}"
    );
    let missing = ServeArgs {
        config: Some("/nonexistent/roster.toml".into()),
        ..Default::default()
    };
    assert!(matches!(
        Config::load(&missing),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn health_settings_from_the_file_and_flags() {
    let path = write(
        "check_concurrency = 64\nself_preservation_threshold = 0.3\nrenewal_window = \"2m\"\n\
         self_preservation_min_instances = 4\nself_preservation_max_hold = \"90s\"\n\
         panic_threshold = 0.2\n\
         [panic_thresholds]\nWeb = 0.5\ndb = 0.1\n",
    );
    let cfg = Config::load(&ServeArgs {
        config: Some(path.clone()),
        check_concurrency: Some(8),
        service_panic_thresholds: vec![("db".into(), 0.4)],
        ..Default::default()
    })
    .unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(cfg.checker.concurrency, 8, "the flag wins");
    assert_eq!(
        cfg.self_preservation,
        SelfPreservation {
            threshold: 0.3,
            window: Duration::from_secs(120),
            min_instances: 4,
            max_hold: Duration::from_secs(90),
        }
    );
    assert_eq!(cfg.panic.threshold("web"), 0.5, "names are lowercased");
    assert_eq!(cfg.panic.threshold("db"), 0.4, "the flag wins");
    assert_eq!(cfg.panic.threshold("other"), 0.2);
    for (args, setting) in [
        (
            ServeArgs {
                check_concurrency: Some(0),
                ..Default::default()
            },
            "check_concurrency",
        ),
        (
            ServeArgs {
                self_preservation_threshold: Some(1.5),
                ..Default::default()
            },
            "self_preservation_threshold",
        ),
        (
            ServeArgs {
                self_preservation_max_hold: Some(Duration::ZERO),
                ..Default::default()
            },
            "self_preservation_max_hold",
        ),
        (
            ServeArgs {
                service_panic_thresholds: vec![("bad_name".into(), 0.5)],
                ..Default::default()
            },
            "panic_thresholds",
        ),
    ] {
        let err = Config::load(&args).unwrap_err();
        assert!(err.to_string().contains(setting), "{err}");
    }
}

#[test]
fn dns_allow_and_rate_limit() {
    assert_eq!(
        parse_cidr("10.0.0.0/8").unwrap(),
        ("10.0.0.0".parse().unwrap(), 8)
    );
    assert_eq!(parse_cidr("::1").unwrap(), ("::1".parse().unwrap(), 128));
    assert_eq!(
        parse_cidr("10.0.0.0/33"),
        Err(CidrError::PrefixLength("10.0.0.0/33".into()))
    );
    assert_eq!(
        parse_cidr("ten/8").unwrap_err().to_string(),
        r#"not an IP address: "ten""#
    );
    let path = write("dns_allow = [\"10.0.0.0/8\", \"fd00::/8\"]\ndns_rate_limit = 50\n");
    let cfg = Config::load(&ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(cfg.dns.allow.len(), 2);
    let rrl = cfg.dns.rrl.unwrap();
    assert_eq!((rrl.responses_per_second, rrl.burst), (50, 100));
    assert!(
        Config::load(&ServeArgs::default())
            .unwrap()
            .dns
            .rrl
            .is_none()
    );
}

#[test]
fn check_policy_from_the_file_and_flags() {
    let cfg = Config::load(&ServeArgs::default()).unwrap();
    assert!(!cfg.probe.output_body, "no bodies by default");
    assert!(cfg.probe.denies("169.254.169.254".parse().unwrap()));
    assert!(!cfg.probe.denies("127.0.0.1".parse().unwrap()));
    let path = write(
        "check_output_body = true\ncheck_deny = [\"10.0.0.0/8\", \"Metadata.Example.\"]\ncheck_deny_loopback = true\n",
    );
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let cfg = Config::load(&args).unwrap();
    assert!(cfg.probe.output_body);
    assert!(cfg.probe.denies("10.1.2.3".parse().unwrap()));
    assert!(cfg.probe.denies("127.0.0.1".parse().unwrap()));
    assert!(cfg.probe.denies("::1".parse().unwrap()));
    assert!(
        cfg.probe.denies("169.254.169.254".parse().unwrap()),
        "defaults kept"
    );
    assert!(cfg.probe.denies_host("metadata.example"));
    assert!(cfg.probe.denies_host("metadata.google.internal"));
    let args = ServeArgs {
        config: Some(path.clone()),
        check_deny: vec!["bad host!".into()],
        ..Default::default()
    };
    let err = Config::load(&args).unwrap_err().to_string();
    assert!(err.contains("check_deny"), "{err}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_cluster_node_needs_a_cluster_token() {
    let dir = std::env::temp_dir().join(format!("roster-cfg-token-{}", std::process::id()));
    let args = |token: Option<&str>| {
        let mut args = ServeArgs {
            data_dir: Some(dir.clone()),
            http_addr: Some("127.0.0.1:8500".parse().unwrap()),
            ..ServeArgs::default()
        };
        args.cluster.bootstrap_expect = Some(1);
        args.cluster.cluster_token = token.map(str::to_owned);
        args
    };
    // Without it anyone who reaches the HTTP port could write to the Raft log.
    for token in [None, Some("short")] {
        let err = Config::load(&args(token)).unwrap_err().to_string();
        assert!(err.contains("cluster_token"), "{token:?}: {err}");
    }
    let cfg = Config::load(&args(Some("a-long-enough-cluster-token"))).unwrap();
    assert_eq!(
        cfg.cluster.map(|c| c.token).as_deref(),
        Some("a-long-enough-cluster-token")
    );
}

#[test]
fn dns_udp_cap_tcp_cap_and_advertised_address() {
    let cfg = Config::load(&ServeArgs::default()).unwrap();
    assert_eq!(cfg.dns.max_udp_payload, 1232);
    assert_eq!(cfg.dns.max_tcp_connections, 256);
    assert_eq!(cfg.dns.advertise_addr, None);
    let path = write(
        "dns_max_udp_payload = 4096\ndns_max_tcp_connections = 64\ndns_advertise_addr = \"10.0.0.53\"\n",
    );
    let from_file = |extra: ServeArgs| {
        Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..extra
        })
    };
    let cfg = from_file(ServeArgs::default()).unwrap();
    assert_eq!(cfg.dns.max_udp_payload, 4096);
    assert_eq!(cfg.dns.max_tcp_connections, 64);
    assert_eq!(cfg.dns.advertise_addr, Some("10.0.0.53".parse().unwrap()));
    let cfg = from_file(ServeArgs {
        dns_max_udp_payload: Some(512),
        dns_max_tcp_connections: Some(8),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (cfg.dns.max_udp_payload, cfg.dns.max_tcp_connections),
        (512, 8)
    );
    for bad in [
        ServeArgs {
            dns_max_udp_payload: Some(511),
            ..Default::default()
        },
        ServeArgs {
            dns_max_tcp_connections: Some(0),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            from_file(bad),
            Err(ConfigError::Invalid { setting, .. }) if setting.starts_with("dns_max_")
        ));
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn cluster_settings_from_the_file() {
    let dir = std::env::temp_dir().join(format!("roster-cfg-cluster-{}", std::process::id()));
    let token = write("  a-token-from-a-mounted-secret\n");
    let path = write(&format!(
        "http_addr = \"0.0.0.0:8500\"\ndata_dir = {dir:?}\nbootstrap_expect = 3\n\
         join = [\"roster-0.roster:8500\", \" roster-1.roster:8500 \", \"\"]\n\
         advertise_addr = \"10.0.0.7:8500\"\nnode_id = 42\n\
         cluster_token_file = {token:?}\nraft_heartbeat = \"250ms\"\n"
    ));
    let file_only = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = Config::load(&file_only)
        .unwrap()
        .cluster
        .expect("cluster mode");
    assert_eq!(c.bootstrap_expect, 3);
    assert_eq!(c.join, ["roster-0.roster:8500", "roster-1.roster:8500"]);
    assert_eq!(c.advertise, "10.0.0.7:8500");
    assert_eq!(c.node_id, Some(42));
    assert_eq!(c.token, "a-token-from-a-mounted-secret", "trimmed");
    assert_eq!(c.heartbeat, Duration::from_millis(250));

    // Flags and variables win over every key, as for the other settings.
    let mut flags = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    flags.cluster = ClusterArgs {
        bootstrap_expect: Some(5),
        join: vec!["10.0.0.1:8500".into()],
        advertise_addr: Some("10.0.0.8:8500".into()),
        node_id: Some(7),
        cluster_token: Some("a-token-given-as-a-flag".into()),
        raft_heartbeat: Some(Duration::from_millis(50)),
        ..ClusterArgs::default()
    };
    let c = Config::load(&flags).unwrap().cluster.unwrap();
    assert_eq!(c.bootstrap_expect, 5);
    assert_eq!(c.join, ["10.0.0.1:8500"]);
    assert_eq!(c.advertise, "10.0.0.8:8500");
    assert_eq!(c.node_id, Some(7));
    assert_eq!(c.token, "a-token-given-as-a-flag");
    assert_eq!(c.heartbeat, Duration::from_millis(50));
    std::fs::remove_file(path).unwrap();

    // `join` may be one comma-separated string, as ROSTER_JOIN is.
    let path = write(&format!(
        "data_dir = {dir:?}\nbootstrap_expect = 2\njoin = \"a:8500, b:8500\"\ncluster_token_file = {token:?}\n"
    ));
    let c = Config::load(&ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.join, ["a:8500", "b:8500"]);
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(token).unwrap();
}

#[test]
fn bad_cluster_settings_name_the_setting() {
    let dir = std::env::temp_dir().join(format!("roster-cfg-cluster-bad-{}", std::process::id()));
    let token = write("a-long-enough-cluster-token\n");
    let short = write("short\n");
    let base =
        format!("http_addr = \"127.0.0.1:8500\"\ndata_dir = {dir:?}\nbootstrap_expect = 1\n");
    let cases = [
        (
            format!("cluster_token_file = {short:?}\n"),
            "cluster_token_file",
        ),
        (
            "cluster_token_file = \"/nonexistent/roster-token\"\n".to_owned(),
            "cluster_token_file",
        ),
        (String::new(), "cluster_token"),
        (
            format!("cluster_token_file = {token:?}\nraft_heartbeat = \"5ms\"\n"),
            "raft_heartbeat",
        ),
        (
            format!("cluster_token_file = {token:?}\nraft_heartbeat = \"soon\"\n"),
            "raft_heartbeat",
        ),
        (
            format!("cluster_token_file = {token:?}\nnode_id = 0\n"),
            "node_id",
        ),
        (
            format!("cluster_token_file = {token:?}\njoin = 8500\n"),
            "join",
        ),
        (
            format!("cluster_token_file = {token:?}\ncluster_token = \"inline-tokens-stay-out\"\n"),
            "cluster_token",
        ),
    ];
    for (extra, setting) in cases {
        let path = write(&format!("{base}{extra}"));
        let err = Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(setting), "{extra:?}: {err}");
        std::fs::remove_file(path).unwrap();
    }
    let path = write(&format!(
        "{base}bootstrap_expect = 9\ncluster_token_file = {token:?}\n"
    ));
    assert!(
        Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .is_err()
    );
    std::fs::remove_file(path).unwrap();
    let path = write(&format!(
        "data_dir = {dir:?}\nbootstrap_expect = 9\ncluster_token_file = {token:?}\n"
    ));
    let err = Config::load(&ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("bootstrap_expect"), "{err}");
    std::fs::remove_file(path).unwrap();

    // A token flag and a token file flag (or their variables) exclude each other.
    let mut both = ServeArgs {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    both.cluster = ClusterArgs {
        bootstrap_expect: Some(1),
        cluster_token: Some("a-long-enough-cluster-token".into()),
        cluster_token_file: Some(token.clone()),
        ..ClusterArgs::default()
    };
    let err = Config::load(&both).unwrap_err().to_string();
    assert!(err.contains("cluster_token_file"), "{err}");
    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeArgs,
    }
    use clap::Parser;
    let token_arg = token.to_str().unwrap();
    assert!(
        Cmd::try_parse_from([
            "roster",
            "--cluster-token",
            "x",
            "--cluster-token-file",
            token_arg
        ])
        .is_err()
    );
    let cmd = Cmd::try_parse_from(["roster", "--cluster-token-file", token_arg]).unwrap();
    assert_eq!(
        cmd.serve.cluster.cluster_token_file.as_deref(),
        Some(token.as_path())
    );
    std::fs::remove_file(token).unwrap();
    std::fs::remove_file(short).unwrap();
}

/// The flags' own parsers say what is wrong, through clap.
#[test]
fn flag_values_that_do_not_parse_are_named() {
    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ServeArgs,
    }
    for (flags, message) in [
        (["--dns-allow", "ten/8"], r#"not an IP address: "ten""#),
        (
            ["--dns-allow", "::1/129"],
            r#"bad prefix length in "::1/129""#,
        ),
        (
            ["--service-panic-threshold", "web"],
            r#"expected SERVICE=RATIO, got "web""#,
        ),
        (
            ["--service-panic-threshold", "web=half"],
            r#"not a number: "half""#,
        ),
    ] {
        let err = <Cmd as clap::Parser>::try_parse_from(std::iter::once("serve").chain(flags))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(message), "{flags:?}: {err}");
    }
}
