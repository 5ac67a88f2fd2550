# Every examples/*/app.pl runs under bin/pagi-server and does what its header
# comment says, answering the request its curl line suggests.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT start_cli stop_cli http_raw http_get_cli stderr_of);
use IO::Select;
use IO::Socket::IP;
use Time::HiRes qw(time);

# Reads until EOF (or $timeout), noting when each read arrived.
sub timed_read {
    my ($port, $request, $timeout) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5) or return;
    $sock->autoflush(1);
    print {$sock} $request;
    my $sel = IO::Select->new($sock);
    my $deadline = time + ($timeout // 10);
    my @reads;
    while ((my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        my $n = sysread $sock, my $buf, 65536;
        last unless $n;
        push @reads, [ time, $buf ];
    }
    return @reads;
}

sub post {
    my ($port, $path, $body, @headers) = @_;
    my $framing = grep({ /^transfer-encoding:/i } @headers) ? '' : "Content-Length: " . length($body) . "\r\n";
    my ($r) = parse_responses(http_raw($port,
        "POST $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n$framing"
        . join('', map { "$_\r\n" } @headers) . "\r\n$body"));
    return $r;
}

# What to check for each example, by directory; others get a generic GET.
my %CHECK = (
    '01-hello-http' => sub {
        my ($child) = @_;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'status 200');
        is($res && $res->{body}, "Hello, World!\n", 'says hello');
    },
    '02-streaming-response' => sub {
        my ($child) = @_;
        my @reads = timed_read($child->{port}, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        my $raw = join '', map { $_->[1] } @reads;
        my ($res) = parse_responses($raw);
        is($res && $res->{status}, 200, 'status 200');
        ok($res && $res->{chunked}, 'the response is chunked');
        ok($res && !defined $res->{header}{'content-length'}, 'without content-length');
        ok($res && !$res->{incomplete}, 'ends with the terminating chunk');
        is($res && $res->{body}, join('', map { "piece $_ of 5\n" } 1 .. 5) . "done\n", 'all pieces arrive, in order');
        my @pieces = $raw =~ /\r\n([0-9a-f]+)\r\npiece \d/gi;
        is(scalar @pieces, 5, 'each piece is a chunk of its own');
        # Streamed, not buffered: the first piece comes well before the end.
        my ($first) = grep { $_->[1] =~ /piece 1 of/ } @reads;
        my ($last)  = grep { $_->[1] =~ /done\n/ } @reads;
        ok($first && $last && $last->[0] - $first->[0] >= 0.3,
            'the first piece arrives at least 0.3 s before the last')
            or diag(sprintf 'reads at %s', join ', ', map { sprintf '%.3f', $_->[0] - $reads[0][0] } @reads);
    },
    '03-request-body' => sub {
        my ($child) = @_;
        my $res = post($child->{port}, '/echo', 'hello body');
        is($res && $res->{status}, 200, 'status 200');
        is($res && $res->{body}, "POST /echo: received 10 bytes\nhello body", 'length and echo of a small body');

        my $big = join '', map { chr(65 + $_ % 26) x 1000 } 0 .. 299;    # 300 KB, several pieces
        my $chunked = join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } unpack '(a50000)*', $big) . "0\r\n\r\n";
        $res = post($child->{port}, '/big', $chunked, 'Transfer-Encoding: chunked');
        is($res && $res->{status}, 200, 'chunked upload: status 200');
        my ($head, $echo) = split /\n/, ($res && $res->{body}) // '', 2;
        is($head, 'POST /big: received 300000 bytes', 'a 300 KB chunked body is read whole');
        ok(defined $echo && $echo eq $big, 'and echoed back unchanged');

        $res = post($child->{port}, '/empty', '');
        is($res && $res->{body}, "POST /empty: received 0 bytes\n", 'an empty body');
    },
    '04-websocket-echo' => sub {
        my ($child) = @_;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'plain GET: status 200');
        is($res && $res->{body}, "Connect with a WebSocket client.\n", 'with the hint');

        # A minimal raw client: the handshake, one masked text frame, a close.
        my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 5)
            or return fail("connect: $@");
        $sock->autoflush(1);
        my $sel = IO::Select->new($sock);
        my $buf = '';
        my $read_until = sub {    # reads into $buf until $cond holds, EOF or 5 s
            my ($cond) = @_;
            my $deadline = time + 5;
            until ($cond->()) {
                my $left = $deadline - time;
                last if $left <= 0 || !$sel->can_read($left);
                sysread($sock, $buf, 65536, length $buf) or last;
            }
        };
        my $frame = sub {    # client frames are masked; payloads here stay under 126 bytes
            my ($opcode, $data) = @_;
            my $mask = "\x37\xfa\x21\x3d";
            return chr(0x80 | $opcode) . chr(0x80 | length $data) . $mask
                . ($data ^ substr($mask x 32, 0, length $data));
        };
        print {$sock} "GET / HTTP/1.1\r\nHost: 127.0.0.1:$child->{port}\r\nUpgrade: websocket\r\n"
            . "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        $read_until->(sub { $buf =~ /\r\n\r\n/ });
        my ($head) = $buf =~ /\A(.*?\r\n)\r\n/s;
        $buf =~ s/\A.*?\r\n\r\n//s;
        like($head // '', qr{\AHTTP/1\.1 101 }, 'the upgrade is answered with 101') or diag($head // $buf);
        like($head // '', qr{^sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r$}mi,
            'with the Sec-WebSocket-Accept of RFC 6455 section 1.3');

        my $text = "h\xc3\xa9llo, echo";    # UTF-8 bytes
        print {$sock} $frame->(0x1, $text);
        $read_until->(sub { length $buf >= 2 + length $text });
        is(substr($buf, 0, 2 + length $text, ''), "\x81" . chr(length $text) . $text,
            'the text frame comes back unmasked and unchanged');

        print {$sock} $frame->(0x8, pack('n', 1000));
        $read_until->(sub { length $buf >= 4 });
        is(substr($buf, 0, 4), "\x88\x02\x03\xe8", 'a close 1000 is answered with close 1000');
        $read_until->(sub { 0 });
        is(length $buf, 4, 'then the server closes the connection');
    },
    '06-lifespan-state' => sub {
        my ($child) = @_;
        my @bodies = map { my $r = http_get_cli($child->{port}, '/'); $r && $r->{status} == 200 ? $r->{body} : '' } 1 .. 2;
        my ($n1, $t1) = $bodies[0] =~ /\Arequest (\d+) since startup at (\d+) /;
        my ($n2, $t2) = $bodies[1] =~ /\Arequest (\d+) since startup at (\d+) /;
        is($n1, 1, 'first request counts 1') or diag("got: $bodies[0]");
        is($n2, 2, 'second request counts 2: the counter in state is shared');
        ok($t1 && abs(time - $t1) < 60, 'the start time from lifespan startup is in state');
        is($t2, $t1, 'both requests see the same startup state');
        unlike(stderr_of($child), qr/lifespan not supported/i, 'the server ran the lifespan protocol');
    },
);

my @apps = sort glob(ROOT() . '/examples/*/app.pl');
ok(scalar @apps >= 4, 'found the examples') or diag("found: @apps");

for my $app (@apps) {
    my ($name) = $app =~ m{/examples/([^/]+)/app\.pl\z};
    subtest "examples/$name" => sub {
        open my $fh, '<', $app or die "$app: $!";
        my $source = do { local $/; <$fh> };
        like($source, qr/\A#/, 'starts with a comment');
        like($source, qr{^# Run: perl -Mblib bin/pagi-server examples/\Q$name\E/app\.pl --port 5000$}m,
            'which says how to run it');
        like($source, qr{^#\s+curl .*http://127\.0\.0\.1:5000/}m, 'and how to try it');

        my $child = start_cli(["examples/$name/app.pl"]);
        ok($child->{ready}, 'pagi-server starts it') or do { diag(stderr_of($child)); return };
        if (my $check = $CHECK{$name}) {
            $check->($child);
        }
        else {
            my $res = http_get_cli($child->{port}, '/');
            ok($res && $res->{status} < 500, 'GET / is answered');
        }
        is(stop_cli($child), 0, 'SIGTERM: exit status 0');
        ok(!$child->{killed}, 'without needing SIGKILL');
        unlike($child->{stderr}, qr/\berror\b/i, 'no errors logged') or diag($child->{stderr});
    };
}

done_testing;
