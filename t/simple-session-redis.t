# PAGI::Simple::Session::Store::Redis end to end: this file starts its own
# redis-server (Debian's /usr/bin/redis-server, on a free loopback port, no
# persistence, stopped at the end) and runs a PAGI::Simple app with the store
# under bin/pagi-server --workers 2 --pubsub redis://127.0.0.1:PORT, so the
# store talks to Redis through the server's groups hub ($hub->redis). Checks:
# the session survives across requests whichever worker answers; Redis holds
# it as JSON under the prefix with an expiry (SET ... EX); clearing deletes
# the key; a key that expired in Redis is an empty session; with Redis gone
# a request with a session answers 500.
use strict;
use warnings;
use v5.36;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(free_port start_cli stop_cli stderr_of http_raw wait_until);
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use JSON::PP ();
use MIME::Base64 ();
use POSIX ();
use Time::HiRes qw(time sleep);

$SIG{PIPE} = 'IGNORE';
my $CI = ($ENV{CI} // '') eq 'true';
my $REDIS_SERVER = '/usr/bin/redis-server';
unless (-x $REDIS_SERVER) {
    plan skip_all => "$REDIS_SERVER is not installed (./setup.sh installs Debian's redis-server)" unless $CI;
}

my $dir = File::Temp->newdir;

# --- a redis-server of our own ------------------------------------------------

my ($redis_pid, $redis_port);
sub start_redis {
    for my $attempt (1 .. 3) {
        $redis_port = free_port();
        $redis_pid = fork // die "fork: $!";
        if (!$redis_pid) {
            open STDIN, '<', '/dev/null';
            open STDOUT, '>>', "$dir/redis.log";
            open STDERR, '>&', \*STDOUT;
            exec $REDIS_SERVER, '--port', $redis_port, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
                '--dir', "$dir", '--daemonize', 'no' or POSIX::_exit(127);
        }
        return 1 if wait_until(sub { (redis('PING') // '') eq 'PONG' }, 10);
        stop_redis();
    }
    return 0;
}
sub stop_redis {
    return unless $redis_pid;
    kill 'TERM', $redis_pid;
    waitpid $redis_pid, 0;
    undef $redis_pid;
}
END { stop_redis() }

# One command over RESP on a fresh connection: the reply (undef for nil or no answer).
sub redis (@command) {
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $redis_port, Timeout => 2) or return undef;
    syswrite $sock, '*' . @command . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @command);
    my ($buf, $sel) = ('', IO::Select->new($sock));
    my $reply;
    my $deadline = time + 5;
    until (defined($reply = resp_parse(\$buf))) {
        my $left = $deadline - time;
        return undef if $left <= 0 || !$sel->can_read($left);
        sysread($sock, $buf, 65536, length $buf) or return undef;
    }
    return $$reply;
}
# A reference to the first complete reply in $$buf (removed from it), or undef if incomplete.
sub resp_parse ($buf) {
    return undef unless $$buf =~ /\A([+\-:\$*])([^\r]*)\r\n/;
    my ($kind, $rest, $head) = ($1, $2, length($1) + length($2) + 2);
    if ($kind eq '+' || $kind eq ':') { substr($$buf, 0, $head, ''); return \"$rest" }
    if ($kind eq '-') { substr($$buf, 0, $head, ''); return \"ERR $rest" }
    if ($kind eq '$') {
        if ($rest < 0) { substr($$buf, 0, $head, ''); return \undef }
        return undef if length $$buf < $head + $rest + 2;
        my $v = substr($$buf, $head, $rest);
        substr($$buf, 0, $head + $rest + 2, '');
        return \$v;
    }
    die "resp_parse: arrays are not needed here\n";
}

# --- the app ------------------------------------------------------------------

my $app_file = "$dir/app.pl";
open my $fh, '>', $app_file or die "$app_file: $!";
print {$fh} <<'APP';
use PAGI::Simple;
use PAGI::Simple::Session::Store::Redis;
my $app = PAGI::Simple->new(name => 'redis-sessions');
$app->sessions(secrets => ['redis-test-secret-0123456789'], expires => 600,
    store => PAGI::Simple::Session::Store::Redis->new(prefix => 'pagi-test:session:'));
$app->get('/count' => sub ($c) { $c->text(++$c->session->{count} . " from $$") });
$app->get('/peek' => sub ($c) { $c->text($c->session->{count} // 'none') });
$app->get('/logout' => sub ($c) { $c->session_clear; $c->text('bye') });
$app->to_app;
APP
close $fh;

sub get ($port, $path, $cookie = undef) {
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        . (defined $cookie ? "Cookie: $cookie\r\n" : '') . "\r\n", 10));
    return $r;
}
sub cookie_of ($res) {
    my ($set) = grep { /^pagi_session=/ } map { $_->[0] eq 'set-cookie' ? $_->[1] : () } @{ $res ? $res->{headers} : [] };
    return defined $set && $set =~ /^(pagi_session=[^;]+)/ ? $1 : undef;
}
# The session id inside a signed cookie (s1.PAYLOAD.SIG, PAYLOAD base64url JSON).
sub id_of ($cookie) {
    my ($payload) = ($cookie // '') =~ /^pagi_session=s1\.([\w-]+)\./ or return undef;
    my $doc = eval { JSON::PP::decode_json(MIME::Base64::decode_base64url($payload)) };
    return $doc && $doc->{id};
}

# --- the tests ------------------------------------------------------------------

ok(start_redis(), "redis-server runs on 127.0.0.1:$redis_port") or do {
    diag(do { open my $l, '<', "$dir/redis.log"; local $/; <$l> } // '');
    done_testing;
    exit;
};

my $child = start_cli([ $app_file, '--workers', 2, '--no-access-log', '--pubsub', "redis://127.0.0.1:$redis_port" ],
    timeout => 20);
ok($child->{ready}, 'pagi-server --workers 2 --pubsub redis://... runs the app') or do {
    diag(stderr_of($child));
    stop_cli($child);
    done_testing;
    exit;
};
my $port = $child->{port};

my $r = get($port, '/count');
like($r && "$r->{status} $r->{body}", qr/\A200 1 from \d+\z/, 'a new session') or diag(stderr_of($child));
my $cookie = cookie_of($r);
my $id = id_of($cookie);
like($id, qr/\A[0-9a-f]{32}\z/, 'the cookie carries a signed random id');
my $key = "pagi-test:session:$id";
is(redis(GET => $key), '{"count":1}', "Redis holds the session as JSON under the prefix ($key)");
my $ttl = redis(TTL => $key);
ok(defined $ttl && $ttl > 590 && $ttl <= 600, 'with the session lifetime as its expiry (SET ... EX 600)') or diag("TTL $ttl");

# Connections are new each time, so both workers answer some of these.
my %pids;
for my $n (2 .. 9) {
    $r = get($port, '/count', $cookie);
    my ($count, $pid) = ($r && $r->{body} // '') =~ /\A(\d+) from (\d+)\z/;
    $pids{$pid // 0}++;
    is($count, $n, "request $n continues the session") or diag($r && "$r->{status} $r->{body}");
    $cookie = cookie_of($r) // $cookie;
}
is(redis(GET => $key), '{"count":9}', 'Redis has the last count');
note('workers that answered: ' . join(', ', map { "$_ ($pids{$_} requests)" } sort keys %pids));

$r = get($port, '/peek', $cookie);
is($r && "$r->{status} $r->{body}", '200 9', 'reading it');

$r = get($port, '/logout', $cookie);
is($r && "$r->{status} $r->{body}", '200 bye', 'clearing the session');
is(redis(EXISTS => $key), 0, 'deletes its key');
$r = get($port, '/peek', $cookie);
is($r && $r->{body}, 'none', 'the old cookie is an empty session now');

# A key Redis expired: the session starts again.
$r = get($port, '/count');
my $cookie2 = cookie_of($r);
my $key2 = 'pagi-test:session:' . (id_of($cookie2) // '');
is(redis(PEXPIRE => $key2, 1), 1, 'a second session, expired in Redis');
ok(wait_until(sub { !redis(EXISTS => $key2) }, 5), 'gone from Redis');
$r = get($port, '/peek', $cookie2);
is($r && "$r->{status} $r->{body}", '200 none', 'its cookie finds an empty session');

# Without Redis a session cannot be loaded.
stop_redis();
$r = get($port, '/peek', $cookie2);
is($r && $r->{status}, 500, 'Redis stopped: a request with a session answers 500');
$r = get($port, '/logout');
is($r && $r->{status}, 200, 'a request that needs no store still works');

is(stop_cli($child), 0, 'SIGTERM: pagi-server exits 0');
unlike($child->{stderr}, qr/panic|segfault/i, 'no crash logged') or diag($child->{stderr});

done_testing;
