# Redis restarted under two pagi-server processes (issue 13): while it is
# down a publish fails its Future with "redis unavailable" (the node's own
# members still get it, the other node's do not), stats say disconnected and
# count the failures; once it is back on the same port both nodes reconnect
# by themselves, each log reports the outage with the number of publishes
# that could not reach other nodes, redis_reconnects is 1, presence is
# rewritten (cluster_count) and messages cross again, exactly once.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop wait_for);    # its import arms the file's alarm
use PAGI::Test::CLI qw(stop_cli stderr_of);
use PAGI::Test::Redis qw(need_redis);
use PAGI::Test::GroupsCluster qw(start_node member cmd cmd_ok group_texts until_crossed settle stats_of);

$SIG{PIPE} = 'IGNORE';
need_redis();
my $redis = PAGI::Test::Redis->start;
my $url = $redis->url;
my ($na, $nb) = map { start_node('--pubsub', $url) } 1 .. 2;

my @a = map { member($na->{port}, join => 'room', tag => "a$_") } 1 .. 2;
my ($b) = member($nb->{port}, join => 'room', tag => 'b1');
ok(until_crossed($a[0], [$b], 'room'), 'before: A to B');
ok(until_crossed($b, \@a, 'room'), 'before: B to A');
is(stats_of($_)->{stats}{redis_connected}, 1, "before: node $_->{tag} is connected") for $a[0], $b;

$redis->stop;
my $stopped_at = loop()->time;
ok(wait_for(sub { !grep { stats_of($_)->{stats}{redis_connected} } $a[0], $b }, 15), 'Redis stopped: both nodes see it gone');

my $GAP = 3;
my @failed;
for my $i (1 .. $GAP) {
    my ($ok, $r) = cmd($a[0], op => 'bcast', group => 'room', text => "gap:$i");
    unless ($ok) { chomp $r; push @failed, $r }
}
is(scalar @failed, $GAP, "all $GAP publishes during the outage failed their Future");
like($_, qr/\Agroups\.publish: redis unavailable: /, "... with 'redis unavailable': " . substr($_, 0, 80)) for @failed[0 .. ($#failed > 0 ? 0 : $#failed)];
ok(!grep({ !/\Agroups\.publish: redis unavailable: / } @failed), "every failure says 'groups.publish: redis unavailable'");
ok(wait_for(sub { group_texts($a[1], qr/\Agap:/) == $GAP }, 10), "the publisher's local members still got them");
is(stats_of($a[0])->{stats}{redis_publish_failed}, $GAP, "stats: redis_publish_failed $GAP");
like(stderr_of($na), qr/pubsub: lost redis:\/\/127\.0\.0\.1:\d+\/0 \(/, 'the log reports the loss');

# Away for a while, so reconnecting takes several attempts with backoff.
settle(1.5);
my $outage = loop()->time - $stopped_at;
$redis->restart;
my %st;
ok(wait_for(sub {
    %st = map { $_->{tag} => stats_of($_)->{stats} } $a[0], $b;
    !grep { !$_->{redis_connected} || $_->{redis_reconnects} != 1 } values %st;
}, 30), 'Redis back on the same port: both nodes reconnected, redis_reconnects 1')
    or diag(explain \%st);
ok(wait_for(sub { stderr_of($na) =~ /is back after/ && stderr_of($nb) =~ /is back after/ }, 10), 'both logs report the return');
like(stderr_of($na), qr/pubsub: redis:\/\/127\.0\.0\.1:\d+\/0 is back after \d+\.\d s; $GAP publish\(es\) could not reach other nodes meanwhile/,
    "node A's log: back after the gap, $GAP publishes could not reach other nodes") or diag(stderr_of($na));
my ($down_for) = stderr_of($na) =~ /is back after (\d+\.\d) s/;
# At least as long as Redis was away on purpose (the log rounds to 0.1 s).
cmp_ok($down_for // 0, '>=', $outage - 0.1, sprintf('the reported outage (%s s) covers the %.2f s Redis was stopped', $down_for // '?', $outage));
like(stderr_of($nb), qr/is back after \d+\.\d s; 0 publish\(es\) could not reach/, "node B's log: 0 (it published nothing)");

# Delivery resumes once each node has subscribed again (a generous deadline).
ok(until_crossed($a[0], [$b], 'room', 30), 'after: A to B again');
ok(until_crossed($b, \@a, 'room', 30), 'after: B to A again');
is(scalar(group_texts($b, qr/\Agap:/)), 0, 'the publishes of the outage never reached B (they failed)');
my $n;
ok(wait_for(sub { ($n = cmd_ok($b, op => 'cluster', group => 'room')) == 3 }, 10), 'presence rewritten: cluster_count 3')
    or diag("got $n");

is(cmd_ok($a[0], op => 'bcast', group => 'room', text => 'after:a'), 1, 'a broadcast from A');
is(cmd_ok($b, op => 'bcast', group => 'room', text => 'after:b'), 0, 'a broadcast from B');
ok(wait_for(sub { group_texts($b, qr/\Aafter:/) >= 1 && group_texts($a[0], qr/\Aafter:/) >= 1 && group_texts($a[1], qr/\Aafter:/) >= 2 }, 20),
    'both cross');
settle();
is(join(' ', group_texts($b, qr/\Aafter:/)), 'after:a', 'B got A\'s once (and not its own)');
is(join(' ', group_texts($a[0], qr/\Aafter:/)), 'after:b', 'A\'s publisher got B\'s once');
is(join(' ', sort(group_texts($a[1], qr/\Aafter:/))), 'after:a after:b', 'A\'s other member got both once');

$_->{c}->close for @a, $b;
for my $node ($na, $nb) {
    is(stop_cli($node), 0, 'SIGTERM: exits 0');
    unlike($node->{stderr}, qr/panic/i, 'no panic');
}
$redis->stop;
done_testing;
