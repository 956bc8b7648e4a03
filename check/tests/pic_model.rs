//! check_pic against the model's own pair behind the trait (it must find
//! nothing, in both edge latches), and against broken pairs (it must find
//! each break under its rule).

use irqdiff_check::{check_pic_with, Config, PIC_UNMODELLED};
use irqdiff_model::pic::{MASTER_COMMAND, SLAVE_COMMAND};
use irqdiff_model::{EdgeRequests, ModelPic, PicConfig, PicDevice, PicProfile, PicRule};

const CASES: Config = Config {
    cases: 3000,
    persist: false,
    seed: Some(15),
};

#[test]
fn the_models_pair_behind_the_trait_finds_nothing() {
    for edge_requests in [EdgeRequests::Transparent, EdgeRequests::HeldUntilAck] {
        let config = Config {
            seed: None,
            ..CASES
        };
        let summary = check_pic_with(&config, None, || ModelPic::new(PicConfig { edge_requests }))
            .unwrap_or_else(|f| panic!("{f}"));
        eprintln!("{edge_requests:?}: {summary:?}");
        let skipped: u32 = summary.skipped.values().sum();
        assert_eq!(summary.compared + skipped, 3000);
        assert!(summary.compared > 2000, "{summary:?}");
        for why in summary.skipped.keys() {
            assert_eq!(*why, PIC_UNMODELLED);
        }
    }
}

/// The model's pair with one rule broken.
struct Broken {
    inner: ModelPic,
    /// Non-specific EOIs (OCW2 0x20) are dropped.
    drop_eoi: bool,
    /// Reports the held-edge latch but is the transparent one.
    lie_about_latch: bool,
}

impl PicDevice for Broken {
    fn port_read(&mut self, port: u16) -> u8 {
        self.inner.port_read(port)
    }
    fn port_write(&mut self, port: u16, value: u8) {
        if self.drop_eoi && (port == MASTER_COMMAND || port == SLAVE_COMMAND) && value == 0x20 {
            return;
        }
        self.inner.port_write(port, value)
    }
    fn set_irq(&mut self, line: u8, level: bool) {
        self.inner.set_irq(line, level)
    }
    fn int_output(&mut self) -> Option<bool> {
        self.inner.int_output()
    }
    fn acknowledge(&mut self) -> Option<u8> {
        self.inner.acknowledge()
    }
    fn profile(&self) -> PicProfile {
        PicProfile {
            edge_requests: if self.lie_about_latch {
                EdgeRequests::HeldUntilAck
            } else {
                EdgeRequests::Transparent
            },
            ..self.inner.profile()
        }
    }
}

#[test]
fn a_pair_that_drops_non_specific_eois_is_found_under_that_rule() {
    let failure = check_pic_with(&CASES, None, || Broken {
        inner: ModelPic::default(),
        drop_eoi: true,
        lie_about_latch: false,
    })
    .expect_err("diverges");
    eprintln!("{failure}");
    assert_eq!(failure.rule, PicRule::NonSpecificEoi, "{failure}");
    assert!(failure.scenario.contains("0x20"), "{failure}");
}

#[test]
fn a_transparent_latch_is_told_from_a_held_one() {
    let failure = check_pic_with(&CASES, None, || Broken {
        inner: ModelPic::default(),
        drop_eoi: false,
        lie_about_latch: true,
    })
    .expect_err("diverges");
    assert!(
        [PicRule::EdgeSense, PicRule::RequestFollowsLine].contains(&failure.rule),
        "{failure}"
    );
    assert!(
        failure.scenario.contains("pulse") || failure.scenario.contains("lower"),
        "{failure}"
    );
}
