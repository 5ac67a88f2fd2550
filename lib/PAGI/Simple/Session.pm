package PAGI::Simple::Session;
use v5.36;
use Carp ();
use Digest::SHA ();
use MIME::Base64 ();
use JSON::MaybeXS ();
use Cookie::Baker ();
use Future;
use Future::AsyncAwait;
use Scalar::Util ();

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::Session - signed (optionally encrypted) cookie sessions for PAGI::Simple

=head1 SYNOPSIS

    my $app = PAGI::Simple->new(name => 'shop');
    $app->sessions(secrets => [ $new_secret, $old_secret ], expires => 3600);
    $app->get('/count' => sub ($c) { $c->text(++$c->session->{count}) });

=head1 DESCRIPTION

By default the whole session is a JSON document in a cookie, signed with
HMAC-SHA256 (L<Digest::SHA>) under the first of C<secrets>; every secret
verifies, so secrets rotate by putting a new one in front. A cookie whose
signature, encoding or expiry does not check out is ignored (the request gets
an empty session), never trusted. The cookie is written when the session
changed during the request (or C<< $c->session_clear >> was called).

Options of C<< $app->sessions(...) >>:

=over

=item secrets => [ ... ] (required; each at least 16 characters; newest first)

=item cookie_name => 'pagi_session'

=item expires => 1209600 (seconds; also in the signed payload, so an old cookie
replayed after its lifetime is rejected)

=item encrypt => 0

1: AES-256-GCM (L<Crypt::AuthEnc::GCM> from CryptX) instead of a plain
signature: the content is unreadable to the client as well as tamper-proof.

=item store => $store

Server-side sessions: the cookie then carries only a signed random id and the
data lives in C<$store>, an object with C<get($id)>, C<set($id, $data,
$expires_epoch)> and C<delete($id)>; L<PAGI::Simple::Session::Store::Memory> is
the in-process one, L<PAGI::Simple::Session::Store::Redis> keeps sessions in
Redis through the server. See L</STORES>.

=item path => '/', domain, samesite => 'Lax', httponly => 1, secure => 'auto'

C<secure> C<auto> sets the Secure attribute when the request came over https.

=back

=head1 STORES

A store is any object with these methods:

=over

=item get($id)

The session data (a hashref) of C<$id>, or undef when there is none (or it
expired).

=item set($id, $data, $expires_epoch)

Keeps C<$data> until C<$expires_epoch> (seconds since the epoch).

=item delete($id)

=item is_async (optional)

True when C<get>, C<set> and C<delete> return L<Future>s (of the same
values) instead of the values themselves. For such a store PAGI::Simple
loads the session B<before> the route's handler (and C<before> hooks) run,
when the request carries a session cookie, so C<< $c->session >> stays a
plain hashref; and a changed session is saved before the response starts
(the C<http.response.start> waits for the C<set> or C<delete> Future). If
that Future fails, the client gets a 500 instead of the response and the
failure is logged. A request without a session cookie touches the store
only when its handler stored something. A synchronous store (no
C<is_async>, or false) is called exactly as before: when the handler first
uses C<< $c->session >> and when the response starts.

=item for_scope($scope) (optional)

Called with the request's PAGI scope before each use, so a store can pick
up what the server offers there (the Redis store takes the server's hub
from C<< $scope->{extensions}{groups} >>).

=back

=cut

my $JSON = JSON::MaybeXS->new(utf8 => 1, canonical => 1);

sub new ($class, %o) {
    my $secrets = $o{secrets};
    $secrets = [$secrets] if defined $secrets && !ref $secrets;
    Carp::croak("sessions: 'secrets' must be a non-empty list of secrets") unless ref $secrets eq 'ARRAY' && @$secrets;
    for (@$secrets) { Carp::croak("sessions: each of 'secrets' must be at least 16 characters") unless defined && length >= 16 }
    my %known = map { $_ => 1 } qw(secrets cookie_name expires encrypt store path domain samesite httponly secure);
    for (keys %o) { Carp::croak("sessions: unknown option '$_'") unless $known{$_} }
    require Crypt::AuthEnc::GCM if $o{encrypt};
    my $async = $o{store} && $o{store}->can('is_async') && $o{store}->is_async ? 1 : 0;
    return bless { cookie_name => 'pagi_session', expires => 14 * 86400, path => '/', samesite => 'Lax',
        httponly => 1, secure => 'auto', %o, secrets => $secrets, async_store => $async }, $class;
}

# True when the store's methods return Futures.
sub async_store ($self) { $self->{async_store} }

# Whether this request's session must be loaded before its handler runs:
# an async store and a session cookie.
sub needs_preload ($self, $c) {
    return 0 unless $self->{async_store};
    return defined $c->req->cookie($self->{cookie_name}) ? 1 : 0;
}

sub _store ($self, $c) {
    my $store = $self->{store};
    $store->for_scope($c->{scope}) if $store->can('for_scope');
    return $store;
}

sub _b64 ($s) { MIME::Base64::encode_base64url($s) }
sub _unb64 ($s) { $s =~ /\A[A-Za-z0-9_-]*\z/ ? MIME::Base64::decode_base64url($s) : undef }
sub _sig ($payload, $secret) { Digest::SHA::hmac_sha256($payload, $secret) }
sub _enc_key ($secret) { Digest::SHA::sha256("pagi-simple-session-encryption\0$secret") }

sub _random_bytes ($n) {
    require Crypt::PRNG;
    return Crypt::PRNG::random_bytes($n);
}

# Constant-time comparison, so a forger learns nothing from timing.
sub _equal ($x, $y) {
    return 0 unless length $x == length $y;
    my $diff = 0;
    $diff |= ord(substr $x, $_, 1) ^ ord(substr $y, $_, 1) for 0 .. length($x) - 1;
    return $diff == 0;
}

sub encode_value ($self, $doc) {
    my $payload = $JSON->encode($doc);
    if ($self->{encrypt}) {
        my $iv = _random_bytes(12);
        my ($ct, $tag) = Crypt::AuthEnc::GCM::gcm_encrypt_authenticate('AES', _enc_key($self->{secrets}[0]), $iv, 'v1', $payload);
        return 'e1.' . _b64($iv . $tag . $ct);
    }
    my $p = _b64($payload);
    return "s1.$p." . _b64(_sig($p, $self->{secrets}[0]));
}

sub decode_value ($self, $value) {
    return undef unless defined $value;
    my $json;
    if ($value =~ /\Ae1\.([A-Za-z0-9_-]+)\z/ && $self->{encrypt}) {
        my $raw = _unb64($1) // return undef;
        return undef if length $raw < 29;
        my ($iv, $tag, $ct) = (substr($raw, 0, 12), substr($raw, 12, 16), substr($raw, 28));
        for my $secret (@{ $self->{secrets} }) {
            $json = Crypt::AuthEnc::GCM::gcm_decrypt_verify('AES', _enc_key($secret), $iv, 'v1', $ct, $tag);
            last if defined $json;
        }
    }
    elsif ($value =~ /\As1\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\z/) {
        my ($p, $sig) = ($1, _unb64($2));
        for my $secret (@{ $self->{secrets} }) {
            if (_equal(_sig($p, $secret), $sig)) { $json = _unb64($p); last }
        }
    }
    return undef unless defined $json;
    my $doc = eval { $JSON->decode($json) };
    return undef unless ref $doc eq 'HASH' && defined $doc->{exp} && $doc->{exp} =~ /\A\d+\z/;
    return undef if $doc->{exp} < time;
    return $doc;
}

# Called by $c->session: the session hashref for this request.
sub load ($self, $c) {
    my $doc = $self->decode_value($c->req->cookie($self->{cookie_name}));
    my $data = {};
    if ($doc) {
        if ($self->{store}) {
            $c->{session_id} = $doc->{id} if defined $doc->{id};
            if ($doc->{id}) {
                my $got = $self->_store($c)->get($doc->{id});
                # An async store's session was loaded before the handler (preload);
                # one that did not say it is async may still hand back a done Future.
                if (Scalar::Util::blessed($got) && $got->isa('Future')) {
                    die "PAGI::Simple::Session: the store's get returned a pending Future; "
                        . "a store whose methods return Futures must have an is_async method returning true\n"
                        unless $got->is_ready;
                    $got = $got->get;
                }
                $data = $got if ref $got eq 'HASH';
            }
        }
        else { $data = ref $doc->{d} eq 'HASH' ? $doc->{d} : {} }
    }
    return $self->_loaded($c, $doc, $data);
}

sub _loaded ($self, $c, $doc, $data) {
    $c->{session_snapshot} = $JSON->encode($data);
    $c->{session_had_cookie} = $doc ? 1 : 0;
    return $data;
}

# For an async store: loads the request's session into $c before the
# handler runs, awaiting the store's get.
async sub preload ($self, $c) {
    my $doc = $self->decode_value($c->req->cookie($self->{cookie_name}));
    my $data = {};
    if ($doc && $doc->{id}) {
        $c->{session_id} = $doc->{id};
        my $got = await _as_future($self->_store($c)->get($doc->{id}));
        $data = $got if ref $got eq 'HASH';
    }
    $c->{session} = $self->_loaded($c, $doc, $data);
    return;
}

sub _as_future ($v) { Scalar::Util::blessed($v) && $v->isa('Future') ? $v : Future->done($v) }

# Called when the response starts: writes the cookie if the session changed.
# Returns the store's Future when the store is async (the response start
# waits for it), else nothing.
sub save ($self, $c) {
    my $data = $c->{session} // return;
    my $clear = $c->{session_clear};
    return if !$clear && $JSON->encode($data) eq ($c->{session_snapshot} // '');
    my %attrs = (path => $self->{path}, samesite => $self->{samesite},
        ($self->{httponly} ? (httponly => 1) : ()),
        (defined $self->{domain} ? (domain => $self->{domain}) : ()),
        (($self->{secure} eq 'auto' ? $c->req->is_secure : $self->{secure}) ? (secure => 1) : ()));
    my $stored;
    if ($clear || !%$data) {
        $stored = $self->_store($c)->delete($c->{session_id}) if $self->{store} && $c->{session_id};
        if ($c->{session_had_cookie} || $clear) {
            $c->res_header('set-cookie' => Cookie::Baker::bake_cookie($self->{cookie_name},
                { value => '', expires => 'Thu, 01 Jan 1970 00:00:00 GMT', 'max-age' => 0, %attrs }));
        }
        return $self->_pending($stored);
    }
    my $exp = time + $self->{expires};
    my $doc;
    if ($self->{store}) {
        my $id = $c->{session_id} //= unpack 'H*', _random_bytes(16);
        $stored = $self->_store($c)->set($id, $data, $exp);
        $doc = { id => $id, exp => $exp };
    }
    else { $doc = { d => $data, exp => $exp } }
    $c->res_header('set-cookie' => Cookie::Baker::bake_cookie($self->{cookie_name},
        { value => $self->encode_value($doc), 'max-age' => $self->{expires}, %attrs }));
    return $self->_pending($stored);
}

# A store's Future the response must wait for; nothing for a sync store or
# one that is already done.
sub _pending ($self, $r) {
    return undef unless Scalar::Util::blessed($r) && $r->isa('Future');
    return undef if $r->is_done;
    return $r;
}

package PAGI::Simple::Session::Store::Memory;
use v5.36;
use JSON::MaybeXS ();

my $STORE_JSON = JSON::MaybeXS->new(utf8 => 1, canonical => 1);

=head1 NAME

PAGI::Simple::Session::Store::Memory - in-process server-side session store

=head1 DESCRIPTION

C<get($id)>, C<set($id, $data, $expires_epoch)>, C<delete($id)>; expired
entries are dropped when read. One process only (workers do not share it).

    PAGI::Simple::Session::Store::Memory->new;                           # synchronous
    PAGI::Simple::Session::Store::Memory->new(async => 1, delay => 0.01);

With C<< async => 1 >> it behaves like a remote store: C<is_async> is true,
every method returns a L<Future> that completes on a later turn of the
L<IO::Async::Loop> (after C<delay> seconds, default 0: the next tick), and
the data is kept as JSON, so a request gets a copy, never another request's
hashref. For trying and testing the async store support.

=cut

sub new ($class, %o) { bless { data => {}, async => $o{async} ? 1 : 0, delay => $o{delay} // 0 }, $class }
sub is_async ($self) { $self->{async} }

sub _reply ($self, $value) {
    return $value unless $self->{async};
    require IO::Async::Loop;
    my $loop = IO::Async::Loop->new;
    my $f = $loop->new_future;
    my $done = sub { $f->done($value) unless $f->is_ready };
    if ($self->{delay} > 0) { $loop->watch_time(after => $self->{delay}, code => $done) }
    else { $loop->later($done) }
    return $f;
}

sub get ($self, $id) {
    my $e = $self->{data}{$id};
    if ($e && $e->[1] < time) { delete $self->{data}{$id}; undef $e }
    return $self->_reply($e && ($self->{async} ? $STORE_JSON->decode($e->[0]) : $e->[0]));
}
sub set ($self, $id, $data, $exp) {
    $self->{data}{$id} = [ $self->{async} ? $STORE_JSON->encode($data) : $data, $exp ];
    return $self->_reply(1);
}
sub delete ($self, $id) { delete $self->{data}{$id}; $self->_reply(1) }

1;
