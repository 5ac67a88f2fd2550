package PAGI::Test::WebSocket;
# A raw WebSocket client for the wire-level tests. It runs on the shared
# IO::Async loop (PAGI::Test::Server::loop), so the in-process app keeps
# running while a test waits with ->get. It builds frames byte by byte (so a
# test can break any rule of RFC 6455 on purpose) and parses what the server
# sends without interpreting it.
#
# Loads PAGI::Test::Server without importing it: the test file's own import
# of PAGI::Test::Server is what arms the per-file alarm.
use strict;
use warnings;

use parent 'Exporter';
use PAGI::Test::Server ();
use PAGI::Test::HTTP ();
use Carp ();
use Digest::SHA ();
use Encode ();
use Future;
use MIME::Base64 ();

our @EXPORT_OK;
BEGIN { @EXPORT_OK = qw(ws_connect ws_open accept_key build_frame parse_frames random_key
                    OP_CONT OP_TEXT OP_BINARY OP_CLOSE OP_PING OP_PONG) }

use constant { OP_CONT => 0, OP_TEXT => 1, OP_BINARY => 2, OP_CLOSE => 8, OP_PING => 9, OP_PONG => 10 };

# The Sec-WebSocket-Accept value for a key (RFC 6455 4.2.2).
sub accept_key {
    my ($key) = @_;
    return MIME::Base64::encode_base64(Digest::SHA::sha1($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'), '');
}

sub random_key { MIME::Base64::encode_base64(join('', map { chr int rand 256 } 1 .. 16), '') }

# build_frame(%o) → bytes of one frame.
#   opcode  (default 1), payload (bytes, default ''), fin (default 1),
#   rsv1/rsv2/rsv3 (0/1) or rsv (0..7, the three bits), mask (default 1),
#   mask_key (4 bytes; random by default), length (the length field to claim
#   instead of the payload's).
sub build_frame {
    my (%o) = @_;
    my $payload = $o{payload} // '';
    Carp::croak('build_frame: payload must be bytes') if utf8::is_utf8($payload) && $payload =~ /[^\x00-\xff]/;
    my $fin = $o{fin} // 1;
    my $rsv = $o{rsv} // (($o{rsv1} ? 4 : 0) | ($o{rsv2} ? 2 : 0) | ($o{rsv3} ? 1 : 0));
    my $opcode = $o{opcode} // OP_TEXT;
    my $mask = $o{mask} // 1;
    my $len = $o{length} // length $payload;
    my $out = chr((($fin ? 1 : 0) << 7) | (($rsv & 7) << 4) | ($opcode & 0x0f));
    my $mbit = $mask ? 0x80 : 0;
    if ($len < 126) { $out .= chr($mbit | $len) }
    elsif ($len < 65536) { $out .= chr($mbit | 126) . pack('n', $len) }
    else { $out .= chr($mbit | 127) . pack('Q>', $len) }
    if ($mask) {
        my $key = $o{mask_key} // pack('N', int rand 2**32);
        $out .= $key;
        $out .= $payload ^ substr($key x (int(length($payload) / 4) + 1), 0, length $payload);
    }
    else {
        $out .= $payload;
    }
    return $out;
}

# parse_frames(\$buf) → list of frames taken off the front of $buf (only
# complete ones). Each: {fin, rsv, opcode, masked, length, payload}; close
# frames also get code (undef when the payload is empty) and reason (bytes).
sub parse_frames {
    my ($buf) = @_;
    my @out;
    my $pos = 0;
    my $total = length $$buf;
    while ($total - $pos >= 2) {
        my ($b0, $b1) = unpack('CC', substr($$buf, $pos, 2));
        my $len = $b1 & 0x7f;
        my $hlen = 2;
        if ($len == 126) {
            last if $total - $pos < 4;
            $len = unpack('n', substr($$buf, $pos + 2, 2));
            $hlen = 4;
        }
        elsif ($len == 127) {
            last if $total - $pos < 10;
            $len = unpack('Q>', substr($$buf, $pos + 2, 8));
            $hlen = 10;
        }
        my $masked = $b1 & 0x80 ? 1 : 0;
        my $key = '';
        if ($masked) {
            last if $total - $pos < $hlen + 4;
            $key = substr($$buf, $pos + $hlen, 4);
            $hlen += 4;
        }
        last if $total - $pos < $hlen + $len;
        my $payload = substr($$buf, $pos + $hlen, $len);
        $payload ^= substr($key x (int($len / 4) + 1), 0, $len) if $masked;
        my $f = {
            fin    => $b0 & 0x80 ? 1 : 0,
            rsv    => ($b0 >> 4) & 7,
            opcode => $b0 & 0x0f,
            masked => $masked,
            length => $len,
            payload => $payload,
        };
        if ($f->{opcode} == OP_CLOSE) {
            if ($len >= 2) {
                $f->{code} = unpack('n', $payload);
                $f->{reason} = substr($payload, 2);
            }
            else {
                $f->{reason} = '';
            }
        }
        push @out, $f;
        $pos += $hlen + $len;
    }
    substr($$buf, 0, $pos, '') if $pos;
    return @out;
}

# ws_open($port, %o) → a PAGI::Test::WebSocket::Client that has sent its
# handshake; ->response gives a Future of the parsed HTTP answer.
# Options: path (default '/'), key, version (13), method (GET), host,
# protocols ('chat, superchat' or [...]), headers ([[name, value], ...]),
# omit => [lc header names to leave out], request (raw request bytes instead),
# extra (bytes written right after the request, e.g. frames), timeout (5).
sub ws_open {
    my ($port, %o) = @_;
    my $c = PAGI::Test::WebSocket::Client->new($port, %o);
    $c->handshake(%o);
    return $c;
}

# ws_connect($port, %o) → Future of ($client, $response), failing unless 101.
sub ws_connect {
    my ($port, %o) = @_;
    my $c = ws_open($port, %o);
    return $c->response->then(sub {
        my ($res) = @_;
        return Future->fail("handshake answered with $res->{status}, not 101: " . PAGI::Test::HTTP::Conn::_show($res->{raw_head}))
            unless $res->{status} == 101;
        return Future->done($c, $res);
    });
}

package PAGI::Test::WebSocket::Client;
use strict;
use warnings;
use IO::Async::Stream;
use IO::Socket::IP;
use Socket ();
use Scalar::Util qw(weaken);

BEGIN { PAGI::Test::WebSocket->import(qw(build_frame parse_frames random_key OP_CONT OP_TEXT OP_BINARY OP_CLOSE OP_PING OP_PONG)) }

# new($port, sndbuf => bytes, auto_pong => 0/1)
sub new {
    my ($class, $port, %o) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM())
        or Carp::croak("connect to port $port: $@");
    setsockopt($sock, Socket::SOL_SOCKET(), Socket::SO_SNDBUF(), $o{sndbuf}) if $o{sndbuf};
    my $self = bless {
        loop => PAGI::Test::Server::loop(), sock => $sock, port => $port,
        mode => 'head', raw => '', head_buf => '', fbuf => '', frames => [], taken => 0,
        eof => 0, waiters => [], written => 0, auto_pong => $o{auto_pong},
    }, $class;
    weaken(my $weak = $self);
    $self->{stream} = IO::Async::Stream->new(
        handle   => $sock,
        read_len => 256 * 1024,
        on_read  => sub {
            my (undef, $in, $eof) = @_;
            if ($weak) {
                $weak->_input($$in);
                $weak->{eof} = 1 if $eof;
                $weak->_check;
            }
            $$in = '';
            return 0;
        },
        on_read_eof    => sub { return unless $weak; $weak->{eof} = 1; $weak->_check },
        on_read_error  => sub { return unless $weak; $weak->{eof} = 1; $weak->{read_error} = $_[1]; $weak->_check },
        on_write_error => sub { return unless $weak; $weak->{write_error} = $_[1]; $weak->_check },
    );
    $self->{loop}->add($self->{stream});
    $self->{response_f} = $self->{loop}->new_future;
    return $self;
}

sub _input {
    my ($self, $bytes) = @_;
    if ($self->{mode} eq 'head') {
        $self->{head_buf} .= $bytes;
        my ($head, $rest) = PAGI::Test::HTTP::split_head($self->{head_buf}) or return;
        my ($res) = PAGI::Test::Server::parse_responses("$head\r\n", head => 1);
        $res->{raw} = $head;
        if ($res->{status} && $res->{status} == 101) {
            $self->{mode} = 'ws';
            $self->{head_buf} = '';
            $self->{response_f}->done($res) unless $self->{response_f}->is_ready;
            $bytes = $rest;
        }
        else {
            $self->{mode} = 'http';
            $self->{http_res} = $res;
            $self->{head_buf} = $rest;
            $self->{raw_head} = $head;
            return $self->_http_check;
        }
    }
    if ($self->{mode} eq 'http') {
        $self->{head_buf} .= $bytes;
        return $self->_http_check;
    }
    $self->{fbuf} .= $bytes;
    for my $f (parse_frames(\$self->{fbuf})) {
        push @{ $self->{frames} }, $f;
        $self->{close_seen} ||= $f if $f->{opcode} == OP_CLOSE;
        $self->send_frame(opcode => OP_PONG, payload => $f->{payload}) if $self->{auto_pong} && $f->{opcode} == OP_PING && !$self->{closed};
        $self->{on_frame}->($f) if $self->{on_frame};
    }
}

# A non-101 answer: complete once its framing says so (or at EOF).
sub _http_check {
    my ($self) = @_;
    my $f = $self->{response_f};
    return if $f->is_ready;
    my $all = $self->{raw_head} . "\r\n" . $self->{head_buf};
    return unless PAGI::Test::HTTP::complete_responses($all, eof => $self->{eof}) >= 1;
    my ($res) = PAGI::Test::Server::parse_responses($all);
    $res->{raw} = $all;
    $f->done($res);
}

sub handshake {
    my ($self, %o) = @_;
    my $req = $o{request};
    unless (defined $req) {
        my $key = $o{key} // random_key();
        $self->{key} = $key;
        my $protocols = $o{protocols};
        $protocols = join(', ', @$protocols) if ref $protocols;
        my %omit = map { lc($_) => 1 } @{ $o{omit} || [] };
        my @h = (
            [ Host                     => $o{host} // "127.0.0.1:$self->{port}" ],
            [ Upgrade                  => $o{upgrade} // 'websocket' ],
            [ Connection               => $o{connection} // 'Upgrade' ],
            [ 'Sec-WebSocket-Key'      => $key ],
            [ 'Sec-WebSocket-Version'  => $o{version} // 13 ],
            (defined $protocols ? [ 'Sec-WebSocket-Protocol' => $protocols ] : ()),
            @{ $o{headers} || [] },
        );
        $req = sprintf("%s %s HTTP/1.1\r\n", $o{method} // 'GET', $o{path} // '/')
            . join('', map { "$_->[0]: $_->[1]\r\n" } grep { !$omit{ lc $_->[0] } } @h) . "\r\n";
    }
    $self->{request} = $req;
    $self->send_raw($req . ($o{extra} // ''));
    my $timeout = $o{timeout} // 5;
    $self->{response_timeout} = $timeout;
    return $self;
}

sub key { $_[0]{key} }

# Future of the parsed handshake answer: {status, header => {...}, headers, raw, body}.
sub response {
    my ($self, $timeout) = @_;
    $timeout //= $self->{response_timeout} // 5;
    my $f = $self->{response_f};
    my $loop = $self->{loop};
    weaken(my $weak = $self);
    return Future->wait_any(
        $f->without_cancel,
        $loop->delay_future(after => $timeout)->then(sub {
            Future->fail("no complete handshake answer after ${timeout}s; got: "
                . PAGI::Test::HTTP::Conn::_show(substr(($weak ? $weak->{head_buf} : ''), 0, 400)));
        }),
    );
}

sub send_raw {
    my ($self, $bytes) = @_;
    $self->{written} += length $bytes;
    $self->{stream}->write($bytes) if $self->{stream}->loop && !$self->{closed};
    return $self;
}

# send_frame(%o): see PAGI::Test::WebSocket::build_frame.
sub send_frame {
    my ($self, %o) = @_;
    return $self->send_raw(build_frame(%o));
}

# send_text($characters, %frame_options): UTF-8 encoded.
sub send_text {
    my ($self, $text, %o) = @_;
    return $self->send_frame(opcode => OP_TEXT, payload => Encode::encode('UTF-8', $text), %o);
}

sub send_binary {
    my ($self, $bytes, %o) = @_;
    return $self->send_frame(opcode => OP_BINARY, payload => $bytes, %o);
}

# send_fragments($opcode, [@payload_bytes], %frame_options): one message in
# several frames (the first with $opcode, then continuations).
sub send_fragments {
    my ($self, $opcode, $parts, %o) = @_;
    my @p = @$parts;
    for my $i (0 .. $#p) {
        $self->send_frame(%o, opcode => $i ? OP_CONT : $opcode, payload => $p[$i], fin => $i == $#p ? 1 : 0);
    }
    return $self;
}

# send_close($code, $reason_bytes); no arguments: an empty Close payload.
sub send_close {
    my ($self, $code, $reason, %o) = @_;
    my $payload = defined $code ? pack('n', $code) . ($reason // '') : '';
    return $self->send_frame(opcode => OP_CLOSE, payload => $payload, %o);
}

sub send_ping {
    my ($self, $payload, %o) = @_;
    return $self->send_frame(opcode => OP_PING, payload => $payload // '', %o);
}

# Stop / restart reading from the socket (the server then meets TCP backpressure).
sub pause  { $_[0]{stream}->want_readready(0); $_[0] }
sub resume { $_[0]{stream}->want_readready(1); $_[0] }

# Every frame received so far (arrayref), and how many are unread.
sub frames  { $_[0]{frames} }
sub pending { scalar(@{ $_[0]{frames} }) - $_[0]{taken} }
sub is_eof  { $_[0]{eof} }
sub written { $_[0]{written} }
sub on_frame { $_[0]{on_frame} = $_[1]; $_[0] }

# next_frames($n, $timeout) → Future of the next $n unread frames.
sub next_frames {
    my ($self, $n, $timeout) = @_;
    return $self->_wait(sub { $self->pending >= $n }, $timeout, "$n frame(s)")->then(sub {
        my @f = @{ $self->{frames} }[ $self->{taken} .. $self->{taken} + $n - 1 ];
        $self->{taken} += $n;
        Future->done(@f);
    });
}

sub next_frame { my ($self, $timeout) = @_; $self->next_frames(1, $timeout) }

# wait_close($timeout) → Future of the first Close frame received (marks every frame up to it read).
sub wait_close {
    my ($self, $timeout) = @_;
    return $self->_wait(sub { $self->{close_seen} }, $timeout, 'a Close frame')->then(sub {
        my $i = 0;
        $i++ until $self->{frames}[$i] == $self->{close_seen};
        $self->{taken} = $i + 1 if $self->{taken} <= $i;
        Future->done($self->{close_seen});
    });
}

# wait_eof($timeout) → Future that completes when the server closed the TCP connection.
sub wait_eof {
    my ($self, $timeout) = @_;
    return $self->_wait(sub { $self->{eof} }, $timeout, 'EOF', 1);
}

# wait_until($code, $timeout, $what) → Future once $code->($client) is true.
sub wait_until {
    my ($self, $cond, $timeout, $what) = @_;
    return $self->_wait(sub { $cond->($self) }, $timeout, $what // 'condition', 1);
}

sub _wait {
    my ($self, $cond, $timeout, $what, $eof_ok) = @_;
    $timeout //= 5;
    my $f = $self->{loop}->new_future;
    push @{ $self->{waiters} }, [ $cond, $f, $eof_ok, $what ];
    $self->_check;
    weaken(my $weak = $self);
    return Future->wait_any(
        $f,
        $self->{loop}->delay_future(after => $timeout)->then(sub {
            Future->fail("timed out after ${timeout}s waiting for $what; " . ($weak ? $weak->describe : ''));
        }),
    );
}

sub _check {
    my ($self) = @_;
    $self->_http_check if $self->{mode} eq 'http';
    if ($self->{eof} && !$self->{response_f}->is_ready && $self->{mode} ne 'http') {
        $self->{response_f}->fail('connection closed before a complete handshake answer; got: '
            . PAGI::Test::HTTP::Conn::_show(substr($self->{head_buf}, 0, 400)));
    }
    my @keep;
    for my $w (@{ $self->{waiters} }) {
        my ($cond, $f, $eof_ok, $what) = @$w;
        next if $f->is_ready;
        if ($cond->()) { $f->done(1) }
        elsif ($self->{eof} && !$eof_ok) { $f->fail("connection closed before $what; " . $self->describe) }
        else { push @keep, $w }
    }
    $self->{waiters} = \@keep;
}

# A short account of what arrived, for failure messages.
sub describe {
    my ($self) = @_;
    my @f = map {
        my $p = substr($_->{payload}, 0, 40);
        sprintf('[op %d fin %d rsv %d len %d%s "%s"]', $_->{opcode}, $_->{fin}, $_->{rsv}, $_->{length},
            (defined $_->{code} ? " code $_->{code}" : ''), PAGI::Test::HTTP::Conn::_show($p));
    } @{ $self->{frames} }[ -(@{ $self->{frames} } > 6 ? 6 : @{ $self->{frames} }) .. -1 ];
    return sprintf('mode %s, eof %d, %d frame(s) received%s; unparsed %d bytes',
        $self->{mode}, $self->{eof}, scalar @{ $self->{frames} }, (@f ? ', last: ' . join(' ', @f) : ''),
        length($self->{fbuf}) + length($self->{head_buf}));
}

# Drops the TCP connection at once (no Close frame).
sub close {
    my ($self) = @_;
    $self->{closed} = 1;
    $self->{stream}->close_now if $self->{stream}->loop;
}

sub DESTROY {
    my ($self) = @_;
    local $@;
    eval { $self->{stream}->close_now if $self->{stream} && $self->{stream}->loop };
}

1;
