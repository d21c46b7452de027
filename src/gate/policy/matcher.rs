//! The compiled form of a rule set: a trie over path segments.
//!
//! Rules that share leading literal segments (`/2010-04-01/Accounts/{AccountSid}/…`) share trie
//! nodes, so one decision walks the request's segments once and only visits the branches that
//! can still match, instead of testing every rule. Matching allocates nothing.

use super::rule::{Rule, SegmentPattern};

#[derive(Debug, Default)]
struct Node {
    /// Plain literal segments (compared ASCII case-insensitively) and the child they lead to.
    literals: Vec<(Box<str>, u32)>,
    /// Wildcard segment patterns and the child they lead to.
    patterns: Vec<(SegmentPattern, u32)>,
    /// Last segments ending in `*`: matching this segment matches the rest of the path.
    tails: Vec<(SegmentPattern, u32)>,
    /// Rules whose pattern ends exactly at this node.
    ends: Vec<u32>,
}

/// Rules indexed by path shape.
#[derive(Debug)]
pub struct Matcher {
    nodes: Vec<Node>,
}

impl Matcher {
    /// Builds the trie; rule `i` is reported as `i`.
    pub fn build(rules: &[Rule]) -> Matcher {
        let mut m = Matcher {
            nodes: vec![Node::default()],
        };
        for (index, rule) in rules.iter().enumerate() {
            let index = index as u32;
            let split = if rule.tail {
                rule.segments.split_last()
            } else {
                None
            };
            let (walk, last) = match split {
                Some((last, walk)) => (walk, Some(last)),
                None => (rule.segments.as_slice(), None),
            };
            let mut node = 0usize;
            for seg in walk {
                node = m.child(node, seg) as usize;
            }
            match last {
                Some(tail) => m.nodes[node].tails.push((tail.clone(), index)),
                None => m.nodes[node].ends.push(index),
            }
        }
        m
    }

    fn child(&mut self, node: usize, seg: &SegmentPattern) -> u32 {
        let found = match seg {
            SegmentPattern::Literal(l) => self.nodes[node]
                .literals
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(l))
                .map(|(_, c)| *c),
            other => self.nodes[node]
                .patterns
                .iter()
                .find(|(k, _)| k == other)
                .map(|(_, c)| *c),
        };
        if let Some(c) = found {
            return c;
        }
        let c = self.nodes.len() as u32;
        self.nodes.push(Node::default());
        match seg {
            SegmentPattern::Literal(l) => self.nodes[node].literals.push((l.clone(), c)),
            other => self.nodes[node].patterns.push((other.clone(), c)),
        }
        c
    }

    /// Calls `hit` with the index of every rule whose path pattern matches `segments`
    /// (decoded). Method and host filters are the caller's.
    pub fn for_each_match(&self, segments: &[&str], sids: &[Box<str>], hit: &mut impl FnMut(u32)) {
        self.walk(0, segments, sids, hit);
    }

    fn walk(&self, node: usize, segments: &[&str], sids: &[Box<str>], hit: &mut impl FnMut(u32)) {
        let node = &self.nodes[node];
        let Some((first, rest)) = segments.split_first() else {
            node.ends.iter().for_each(|&r| hit(r));
            return;
        };
        for (pattern, rule) in &node.tails {
            if pattern.matches(first, sids) {
                hit(*rule);
            }
        }
        for (literal, child) in &node.literals {
            if literal.len() == first.len() && literal.eq_ignore_ascii_case(first) {
                self.walk(*child as usize, rest, sids, hit);
            }
        }
        for (pattern, child) in &node.patterns {
            if pattern.matches(first, sids) {
                self.walk(*child as usize, rest, sids, hit);
            }
        }
    }
}
