//! The render thread's queue: a queue per desktop, served round robin,
//! so a desktop that submits without pause gets one turn in N while N
//! desktops have work. Pure data structure, no Vulkan.

use std::collections::VecDeque;

/// Queues served round robin by key: each key's items in order, one item
/// per key per turn.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    turns: VecDeque<(K, VecDeque<T>)>,
}

impl<K: PartialEq, T> Default for FairQueue<K, T> {
    fn default() -> Self {
        FairQueue {
            turns: VecDeque::new(),
        }
    }
}

impl<K: PartialEq, T> FairQueue<K, T> {
    pub fn push(&mut self, key: K, item: T) {
        match self.turns.iter_mut().find(|(k, _)| *k == key) {
            Some((_, items)) => items.push_back(item),
            None => self.turns.push_back((key, VecDeque::from([item]))),
        }
    }

    /// The next item: the first of the key whose turn it is; that key
    /// goes to the back of the line if it has more.
    pub fn pop(&mut self) -> Option<(K, T)>
    where
        K: Clone,
    {
        let (key, mut items) = self.turns.pop_front()?;
        let item = items.pop_front().expect("keys in line have items");
        if !items.is_empty() {
            self.turns.push_back((key.clone(), items));
        }
        Some((key, item))
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::FairQueue;

    #[test]
    fn a_busy_key_gets_one_turn_in_n() {
        let mut queue = FairQueue::default();
        for i in 0..100 {
            queue.push("busy", i);
        }
        queue.push("quiet", 1000);
        queue.push("other", 2000);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).take(6).collect();
        assert_eq!(
            order,
            [
                ("busy", 0),
                ("quiet", 1000),
                ("other", 2000),
                ("busy", 1),
                ("busy", 2),
                ("busy", 3)
            ]
        );
        // A key that comes back joins the end of the line.
        queue.push("quiet", 1001);
        assert_eq!(queue.pop(), Some(("busy", 4)));
        assert_eq!(queue.pop(), Some(("quiet", 1001)));
        assert!(!queue.is_empty());
    }
}
